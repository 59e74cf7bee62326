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

# seed 000's experiment, small: train on the bundled digits (original / decompose at epoch 3 /
# decompose at 3 and reconstruct at 10), print the table and the figure's path. (API example:
# examples/demo.py.)
demo: $(STAMP)
	rm -rf demo-out
	$(PY) -m factorch experiment --model vgg-small --dataset digits --epochs 12 --batch-size 32 \
		--lr 0.05 --scenarios original,dec@3,dec@3+rec@10 --out demo-out

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
