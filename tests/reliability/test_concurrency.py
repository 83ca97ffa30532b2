"""Two identical jobs at once (issue 18, item 8): the job dir's lock makes the second wait, then reuse
the first's record instead of running the job again; a holder that dies never leaves the lock behind.

The job that waits is ``run_experiment`` in a thread of the test process; "the other process" is the
test itself (a second open file of the lock: ``flock`` conflicts between open files, in one process as
across processes) or a small subprocess killed with SIGKILL. ``infopt.experiment.load`` is replaced by a
function that records the call, so whether the job went on to load the model (and run the technique)
is seen without loading one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, compose_config

JOB = ["model=tiny_llama", "technique=baseline", "eval=quick", "bench=none", "logger=none", "skip_baseline=true"]


class Loaded(Exception):
    """The waiting job went on to load the model: it ran the job itself."""


@pytest.fixture
def job(tmp_path, monkeypatch, caplog):
    """(config, output dir, start): ``start()`` runs the job in a thread and returns (thread, outcome)."""
    from infopt import experiment
    from infopt.studies import joblock

    def load(setup):
        raise Loaded(str(setup.output_dir))

    monkeypatch.setattr(experiment, "load", load)
    monkeypatch.setattr(joblock, "POLL_S", 0.02)
    caplog.set_level(logging.INFO)
    out = tmp_path / "job"
    cfg = compose_config(JOB, out)

    def start():
        outcome: dict = {}

        def target():
            try:
                outcome["record"] = experiment.run_experiment(cfg)
            except BaseException as err:  # noqa: BLE001 - handed to the test
                outcome["error"] = err

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread, outcome

    return cfg, out, start


def wait_for_line(caplog, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if lines:
            return lines[0]
        time.sleep(0.02)
    raise AssertionError(f"no line with {text!r}: {[r.getMessage() for r in caplog.records]}")


def test_a_second_identical_job_waits_for_the_first_and_reuses_its_record(job, caplog):
    from infopt.experiment import JobInfo, prepare
    from infopt.io import atomic_write_json
    from infopt.results import SCHEMA_VERSION
    from infopt.studies.joblock import job_lock

    cfg, out, start = job
    config_hash = prepare(cfg, JobInfo()).config_hash  # what the waiting job computes for itself
    with job_lock(out):  # the first job, still running
        thread, outcome = start()
        line = wait_for_line(caplog, "waiting for")
        assert line == f"waiting for {out}: another process (pid {os.getpid()}) is running this job"
        time.sleep(0.2)
        assert thread.is_alive(), "it waits while the lock is held"
        record = {"schema_version": SCHEMA_VERSION, "config_hash": config_hash, "run": {"status": "complete"},
                  "result": {"eval": {"x": 1.0}}}  # fmt: skip
        atomic_write_json(out / "results.json", record)  # the first job's record, then its lock goes
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")  # Loaded would mean the job ran again
    assert outcome["record"]["skipped"] is True and outcome["record"]["result"] == {"eval": {"x": 1.0}}
    assert (out / "skipped.json").is_file()  # counted as skipped by the sweep summary


def test_a_job_whose_holder_is_killed_runs_instead_of_waiting_forever(job, caplog):
    """SIGKILL runs no cleanup: the kernel releases the flock as the process's files close."""
    _cfg, out, start = job
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    hold = ("import sys, time; from pathlib import Path; from infopt.studies.joblock import job_lock\n"
            "with job_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(600)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        thread, outcome = start()
        line = wait_for_line(caplog, "waiting for")
        assert line == f"waiting for {out}: another process (pid {holder.pid}) is running this job"
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(30) == -signal.SIGKILL
        thread.join(60)
        assert not thread.is_alive(), "a dead holder's lock must not block"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert isinstance(outcome.get("error"), Loaded), outcome  # no record to reuse: it ran the job itself
    wait_for_line(caplog, "the other process left no complete record of this config; running this job", 1)


def test_an_unlocked_job_dir_costs_no_wait(job, caplog):
    _cfg, out, start = job
    thread, outcome = start()
    thread.join(60)
    assert isinstance(outcome.get("error"), Loaded), outcome
    assert not [r for r in caplog.records if "waiting for" in r.getMessage()]
    assert (out / ".infopt.lock").read_text().split()[0] == str(os.getpid())  # the last holder, for the line
