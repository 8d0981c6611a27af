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

# The main job, offline: the template cohort (montages), then two labelled pairs from the bundled generators
# (25 and 100 mL asked) and the one-click segmentation of the 100 mL image with the bundled segmenter.
demo: venv
	$(PY) training/train.py data --config tiny --work $(DEMO_OUT)/cohort
	@echo "demo: cohort montages: $(DEMO_OUT)/cohort/data/natural/montage.png $(DEMO_OUT)/cohort/data/enlarged/montage.png"
	@if [ -d VentricleSynth/Resources/Models/mask_generator ]; then \
	  $(PY) -m VentricleSynthLib generate --ventricle-ml 25 --seed 1 --out $(DEMO_OUT)/normal_25ml && \
	  $(PY) -m VentricleSynthLib generate --ventricle-ml 100 --seed 2 --out $(DEMO_OUT)/enlarged_100ml && \
	  echo "demo: previews: $(DEMO_OUT)/normal_25ml/sample_000/preview.png $(DEMO_OUT)/enlarged_100ml/sample_000/preview.png"; \
	else echo "demo: no generator bundles in VentricleSynth/Resources/Models (see README, Status)"; fi
	@if [ -d VentricleSynth/Resources/Models/segmenter ] && [ -f $(DEMO_OUT)/enlarged_100ml/sample_000/image.nii.gz ]; then \
	  $(PY) -m VentricleSynthLib segment $(DEMO_OUT)/enlarged_100ml/sample_000/image.nii.gz \
	    --out $(DEMO_OUT)/enlarged_100ml/sample_000/segmentation.nii.gz && \
	  echo "demo: segmentation of the 100 mL sample: $(DEMO_OUT)/enlarged_100ml/sample_000/segmentation.nii.gz"; \
	else echo "demo: no segmenter bundle in VentricleSynth/Resources/Models (see README, Status)"; fi

test: venv
	$(PY) -m pytest -q -ra Testing

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" Testing

clean-venv:
	rm -rf $(VENV)
