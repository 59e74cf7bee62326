# Quick start: `make demo` and `make test` on a fresh machine (Python 3.10+ with venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/decompose_speed.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/tucker_vs_tltorch.py
	$(PY) benchmarks/tt_inference.py
	$(PY) benchmarks/tt_conv_costs.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
