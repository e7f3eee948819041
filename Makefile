# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.countlens-installed

.PHONY: setup demo test clean

setup: $(STAMP)

# torch==2.13.0 (CPU wheel) is installed first only when no torch is importable; a torch the
# user already has (in the system Python) is kept by giving the venv the system site-packages.
$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PY) -c "import torch" 2>/dev/null; then $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; fi
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/countlens run --preset quick --out runs/demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
