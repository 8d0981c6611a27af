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

# Slicer's own Pythons (5.8: 3.9, 5.10/5.12: 3.12), from pyenv: what Slicer's process imports is tested under them.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
SLICER_PY39 ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.9.*/bin/python3.9)))
SLICER_PY312 ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.12.*/bin/python3.12)))
# The suites of what Slicer's process imports: the glue, the worker's protocol/client/processes, the module file.
SLICER_SUITES := Testing/slicer_glue Testing/module Testing/worker/test_worker_protocol.py \
	Testing/worker/test_worker_client.py Testing/worker/test_worker_processes.py
SLICER_TEST_PACKAGES := numpy nibabel pillow pytest

.PHONY: venv demo test test-fast test-slicer-pythons clean-venv

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
	$(MAKE) test-slicer-pythons

.venv-slicer39/.installed .venv-slicer312/.installed: Makefile
	@test -n "$(if $(findstring 39,$@),$(SLICER_PY39),$(SLICER_PY312))" || { echo "error: no Python \
	$(if $(findstring 39,$@),3.9,3.12) under $(PYENV_ROOT)/versions (set SLICER_PY39/SLICER_PY312)" >&2; exit 2; }
	rm -rf $(dir $@)
	$(if $(findstring 39,$@),$(SLICER_PY39),$(SLICER_PY312)) -m venv $(dir $@)
	$(dir $@)bin/python -m pip install -q $(SLICER_TEST_PACKAGES) $(if $(findstring 312,$@),slicer-core)
	touch $@

# Under Slicer 5.8's Python 3.9 the module must load and refuse cleanly; under 3.12 (5.10, 5.12) everything passes.
test-slicer-pythons: .venv-slicer39/.installed .venv-slicer312/.installed
	for v in 39 312; do VENTRICLESYNTH_SLICER_PYTHON_SUITE=$$v PYTHONPATH=$(CURDIR) \
	  .venv-slicer$$v/bin/python -m pytest -q -ra -p no:cacheprovider $(SLICER_SUITES) || exit 1; done

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" Testing

clean-venv:
	rm -rf $(VENV)
