# Quick start: `make demo` and `make test` on a fresh machine (Python 3.10+ with venv).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# A second environment with the package alone (`pip install .`, no extras): proves that a plain
# install runs every method and the CLI (tests/plain_install_smoke.py). Rebuilt from nothing
# when the dependencies change; the package is reinstalled when its sources change. torch goes in
# without byte-compiling its thousands of modules (the few imported compile on first use).
PLAIN       := .venv-plain
PLAIN_PY    := $(PLAIN)/bin/python
PLAIN_BASE  := $(PLAIN)/.torch-stamp
PLAIN_STAMP := $(PLAIN)/.installed-stamp
SOURCES     := $(shell find factorch -name '*.py')

.PHONY: venv demo test bench gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(PLAIN_BASE): pyproject.toml Makefile
	rm -rf $(PLAIN)
	$(PYTHON) -m venv $(PLAIN)
	$(PLAIN_PY) -m pip install --quiet --no-compile "$(TORCH)"
	touch $(PLAIN_BASE)

$(PLAIN_STAMP): $(PLAIN_BASE) $(SOURCES) README.md
	$(PLAIN_PY) -m pip uninstall --quiet --yes factorch
	$(PLAIN_PY) -m pip install --quiet .
	rm -rf build
	touch $(PLAIN_STAMP)

# Elhoushi et al. 2019's experiment, small: a VGG-7 on the bundled digits (original / Tucker-2 at a tenth of
# each conv's parameters after epoch 1 / the same, reconstructed after epoch 5), then the table
# (with the training-step throughput of each final model against the dense one) and the figure.
# One thread: on a machine shared with other jobs two threads make every step wait for the slower
# one (3x slower epochs under load). (API example: examples/demo.py.)
demo: $(STAMP)
	rm -rf demo-out
	OMP_NUM_THREADS=1 $(PY) -m factorch experiment --model vgg7 --dataset digits --epochs 6 --batch-size 64 \
		--lr 0.05 --method tucker2 --rank 0.1 --scenarios original,dec@1,dec@1+rec@5 --out demo-out

# the test suite, then the smoke test in the extras-free environment (the script's directory, not
# the checkout, is on its import path: it imports the installed package); byte code is cached
# there even where PYTHONDONTWRITEBYTECODE is set, as torch was installed without it
test: $(STAMP) $(PLAIN_STAMP)
	$(PY) -m pytest -q
	env -u PYTHONDONTWRITEBYTECODE $(PLAIN_PY) tests/plain_install_smoke.py --installed $(PLAIN)/bin/factorch
	PYTHON=$(PY) benchmarks/gpu_suite.sh --smoke

# every GPU result file (benchmarks/gpu_suite.sh: under 8 minutes on one GPU; `make test` runs
# its --smoke mode on the CPU so it cannot rot)
gpu:
	benchmarks/gpu_suite.sh

bench: $(STAMP)
	$(PY) benchmarks/decompose_speed.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/tucker_vs_tltorch.py
	$(PY) benchmarks/tt_inference.py
	$(PY) benchmarks/tt_conv_costs.py

clean:
	rm -rf $(VENV) $(PLAIN) build *.egg-info .pytest_cache
