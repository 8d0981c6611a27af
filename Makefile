# VentricleSynth — developer entry points. `make demo` and `make test` are the two README commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
export nnUNet_n_proc_DA ?= 0
export nnUNet_def_n_proc ?= 2
export OMP_NUM_THREADS ?= 2
DEMO_OUT ?= demo_output

.PHONY: venv demo test test-fast clean-venv cohort-tiny

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -c $(CONSTRAINTS) torch torchvision
	$(PIP) install -c $(CONSTRAINTS) -e ".[test,eval]"
	touch $@

# Until the bundled generators land, the demo builds and previews the offline template cohort.
demo: venv
	$(PY) training/train.py data --config tiny --work $(DEMO_OUT)
	@echo "demo: cohort montages: $(DEMO_OUT)/data/natural/montage.png $(DEMO_OUT)/data/enlarged/montage.png"
	@echo "demo: per-case volumes: $(DEMO_OUT)/data/natural/cases.csv $(DEMO_OUT)/data/enlarged/cases.csv"

test: venv
	$(PY) -m pytest -q -ra Testing

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" Testing

clean-venv:
	rm -rf $(VENV)
