# make demo: train and evaluate small models on embedded synthetic data (or DATA=/path/to/PH2).
# make test: the whole CPU test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
DEMO_OUT ?= demo_runs

.PHONY: demo test install clean

install: $(STAMP)

# torch first: the CPU wheel here; an existing (e.g. CUDA) torch in the venv is kept.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	@# pyradiomics, the reference the GLCM and shape tests compare with (they are skipped without it):
	@# 3.1.0 on PyPI does not build, 3.0.1 does without build isolation
	$(BIN)/python -c "import radiomics" 2>/dev/null || ($(BIN)/python -m pip install -q setuptools wheel && $(BIN)/python -m pip install -q pyradiomics==3.0.1 --no-build-isolation) \
		|| echo "pyradiomics did not build: the tests that compare with it will be skipped (in CI they fail)"
	@# triton, whose CPU interpreter runs ARL's fused GPU kernel in the tests (CUDA builds of torch bring it;
	@# it has wheels only, for Linux)
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/python -m pip install -q "triton>=3.2" \
		|| echo "triton did not install: the fused-kernel tests will be skipped (in CI they fail)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m medsight.demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA))

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) runs
