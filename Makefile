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

# The main job, offline: two labelled pairs from the bundled generators (normal and enlarged ventricles).
demo: venv
	$(PY) -m VentricleSynthLib generate --ventricle-ml 25 --seed 1 --out $(DEMO_OUT)/normal_25ml
	$(PY) -m VentricleSynthLib generate --ventricle-ml 100 --seed 2 --out $(DEMO_OUT)/enlarged_100ml
	@echo "demo: outputs in $(DEMO_OUT)/ (image.nii.gz, label.nii.gz, sample.json per sample)"
	@echo "demo: previews: $(DEMO_OUT)/normal_25ml/sample_000/preview.png $(DEMO_OUT)/enlarged_100ml/sample_000/preview.png"

# The offline template cohort at the tiny profile, with montages.
cohort-tiny: venv
	$(PY) training/train.py data --config tiny --work $(DEMO_OUT)/cohort
	@echo "cohort: montages in $(DEMO_OUT)/cohort/data/*/montage.png"

test: venv
	$(PY) -m pytest -q -ra Testing

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" Testing

clean-venv:
	rm -rf $(VENV)
