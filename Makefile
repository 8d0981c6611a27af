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

.PHONY: venv demo test test-fast clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -c $(CONSTRAINTS) torch torchvision
	$(PIP) install -c $(CONSTRAINTS) -e ".[test,eval]"
	touch $@

# The main job, offline. Until generator bundles are committed (VentricleSynth/Resources/Models), the demo
# builds the template cohort and its montages; with bundles present it also generates two labelled pairs.
demo: venv
	$(PY) training/train.py data --config tiny --work $(DEMO_OUT)/cohort
	@echo "demo: cohort montages: $(DEMO_OUT)/cohort/data/natural/montage.png $(DEMO_OUT)/cohort/data/enlarged/montage.png"
	@if [ -d VentricleSynth/Resources/Models/mask_generator ]; then \
	  $(PY) -m VentricleSynthLib generate --ventricle-ml 25 --seed 1 --out $(DEMO_OUT)/normal_25ml && \
	  $(PY) -m VentricleSynthLib generate --ventricle-ml 100 --seed 2 --out $(DEMO_OUT)/enlarged_100ml && \
	  echo "demo: previews: $(DEMO_OUT)/normal_25ml/sample_000/preview.png $(DEMO_OUT)/enlarged_100ml/sample_000/preview.png"; \
	else echo "demo: no generator bundles in VentricleSynth/Resources/Models yet (see README, Status)"; fi

test: venv
	$(PY) -m pytest -q -ra Testing

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" Testing

clean-venv:
	rm -rf $(VENV)
