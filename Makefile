# lowbit: `make demo` installs lowbit and runs the main job; `make test` runs the suite.
PYTHON ?= python
PIP = $(PYTHON) -m pip
# The CPU build of PyTorch lies on this kind of machine's disk; install it first so the
# range in pyproject.toml is already satisfied and pip does not pull a multi-GB CUDA build.
TORCH_PIN = torch==2.13.0

.PHONY: install install-test demo test bench results clean

install:
	$(PIP) install --quiet $(TORCH_PIN) || $(PIP) install --quiet "torch>=2.6,<3"
	$(PIP) install --quiet -e .

install-test: install
	$(PIP) install --quiet -e ".[test]"

demo: install
	$(PYTHON) -m lowbit demo --out runs/demo

test: install-test
	$(PYTHON) -m pytest -q

# The benchmarks that fit a 2-core CPU machine (BENCHMARKS.md sections 1-6; a few hours in all, the
# ReLeQ search the longest), each with its default flags, then RESULTS.md from benchmarks/results/.
# Each script writes its own results/*.json and *.md; `make results` only re-renders RESULTS.md.
BENCHMARKS = step_overhead.py foundation.py sinreq.py sinreq_cheat.py waveq_bench.py dcq_bench.py dcq_own_model.py releq_bench.py waveq_sensitivity.py export_bench.py export_onnx_bench.py onnx_linear_kernels.py recipe_tuning.py robustness.py

bench: install-test
	set -e; for script in $(BENCHMARKS); do echo "== benchmarks/$$script"; $(PYTHON) benchmarks/$$script; done
	$(PYTHON) benchmarks/make_results.py

results:
	$(PYTHON) benchmarks/make_results.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
