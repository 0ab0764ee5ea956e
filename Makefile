# lowbit: `make demo` installs lowbit and runs the main job; `make test` runs the suite.
PYTHON ?= python
PIP = $(PYTHON) -m pip
# The CPU build of PyTorch lies on this kind of machine's disk; install it first so the
# range in pyproject.toml is already satisfied and pip does not pull a multi-GB CUDA build.
TORCH_PIN = torch==2.13.0

.PHONY: install install-test demo test clean

install:
	$(PIP) install --quiet $(TORCH_PIN) || $(PIP) install --quiet "torch>=2.6,<3"
	$(PIP) install --quiet -e .

install-test: install
	$(PIP) install --quiet -e ".[test]"

demo: install
	$(PYTHON) -m lowbit demo --out runs/demo

test: install-test
	$(PYTHON) -m pytest -q

clean:
	rm -rf runs build *.egg-info .pytest_cache
