#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and for
# trying `python run.py -m hydra/launcher=slurm_cpu ...` without a real cluster.
#
#   scripts/slurm_cluster.sh start    # install (apt, as root) if needed, configure, start; idempotent
#   scripts/slurm_cluster.sh status   # exit 0 when sinfo shows the node usable, else 1 and the reason
#   scripts/slurm_cluster.sh stop     # stop the daemons this script started
#
# What it sets up (Debian's slurm-wlm 22.05 and munge): a munge key, /etc/slurm/slurm.conf for this
# host alone (its CPUs and memory as `slurmd -C` reports them, one partition `debug`,
# proctrack/linuxproc, task/none: no cgroups needed; accounting off), then munged, slurmctld and
# slurmd started directly (no systemd). It never overwrites a slurm.conf it did not write: on a
# machine with a real cluster configuration it stops and says so.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by infopt scripts/slurm_cluster.sh"
PARTITION=debug
STATE_DIRS=(/var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge)

say() { echo "slurm_cluster: $*" >&2; }
die() { say "$*"; exit 1; }

installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; }

install() {
  installed && return 0
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: sudo apt-get install slurm-wlm munge"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get here"
  say "installing slurm-wlm and munge (apt-get, about a minute)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
  installed || die "slurm-wlm installed but slurmctld/slurmd/munged/sbatch are not on PATH"
}

node_usable() {
  # One line: the node's state as sinfo sees it ("idle", "mixed", "allocated", "down*", ...).
  local state
  state=$(timeout 10 sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -1) || return 1
  case "$state" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

write_conf() {
  local host node
  host=$(hostname -s)
  # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24104"
  node=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -1) || true
  [ -n "$node" ] || die "slurmd -C could not describe this node"
  mkdir -p /etc/slurm
  local tmp
  tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
  cat >"$tmp" <<EOF
$MARK: a one-node cluster for tests.
ClusterName=infopt
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Accounting off: sacct answers "accounting storage is disabled"; infopt's launcher reads job
# states from scontrol instead. Finished jobs stay visible to scontrol for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# Seconds between SIGTERM and SIGKILL at a time limit or scancel.
KillWait=30
InactiveLimit=0
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 644 "$tmp"
  mv "$tmp" "$CONF"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || { node_usable && exit 0; die "not root: cannot start SLURM daemons (sudo $0 start)"; }
  install
  if [ -f "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    node_usable && { say "using the SLURM cluster configured in $CONF"; exit 0; }
    die "$CONF exists and was not written by this script; not touching a real cluster's configuration"
  fi
  mkdir -p "${STATE_DIRS[@]}"
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating a munge key"
    (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  if ! running /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  fi
  local before
  before=$(cat "$CONF" 2>/dev/null || true)
  write_conf
  if [ "$before" != "$(cat "$CONF")" ]; then  # a new or changed configuration: restart the daemons
    stop_daemons
  fi
  running /run/slurmctld.pid || slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
  running /run/slurmd.pid || slurmd || die "slurmd did not start (see /var/log/slurm/slurmd.log)"
  local host
  host=$(hostname -s)
  for _ in $(seq 60); do
    node_usable && { say "up: node $host, partition $PARTITION ($(sinfo -h -p $PARTITION -o '%c CPUs, %m MB'))"; exit 0; }
    # A node that came back from an earlier crash may be down/drained: this node is ours to resume.
    case "$(sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -1)" in
      down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "the node did not become idle within 60 s: $(sinfo -h -o '%T %E' 2>&1 | head -1)"
}

stop_daemons() {
  local pidfile
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 30); do running "$pidfile" || break; sleep 0.5; done
    fi
  done
}

stop() {
  [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK" || die "$CONF was not written by this script; not stopping anything"
  stop_daemons
  if running /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)"; fi
  say "stopped"
}

status() {
  command -v sinfo >/dev/null || { echo "slurm-wlm is not installed (scripts/slurm_cluster.sh start, as root)"; exit 1; }
  local line
  line=$(timeout 10 sinfo -h -p "$PARTITION" -o "%T|partition %P: node %N %T, %c CPUs, %m MB" 2>&1 | head -1) || true
  case "${line%%|*}" in
    idle|mixed|allocated|completing) echo "${line#*|}"; exit 0 ;;
  esac
  echo "no usable node in partition $PARTITION: ${line#*|}"
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
