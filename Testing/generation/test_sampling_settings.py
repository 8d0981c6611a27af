"""Sampling settings: the bundles' defaults, overridden by the request, checked once; the panel's torch-free read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from VentricleSynthLib.bundles.store import BUNDLED, IMAGE, MASK
from VentricleSynthLib.errors import RequestError
from VentricleSynthLib.generation.settings import FALLBACK, MAX_CANDIDATES, bundle_sampling, panel_defaults, resolve

REPO = Path(__file__).resolve().parents[2]
MASK_DEFAULTS = {"guidance": 4.0, "steps": 25, "candidates": 6}
IMAGE_DEFAULTS = {"steps": 50}


def test_the_request_overrides_the_bundle_defaults_and_steps_apply_to_both_stages():
    defaults = resolve(MASK_DEFAULTS, IMAGE_DEFAULTS)
    assert (defaults.guidance, defaults.mask_steps, defaults.image_steps, defaults.candidates) == (4.0, 25, 50, 6)
    asked = resolve(MASK_DEFAULTS, IMAGE_DEFAULTS, guidance=2, steps=10, candidates=1)
    assert asked.steps == {"mask": 10, "image": 10} and asked.guidance == 2.0 and asked.candidates == 1
    assert resolve(MASK_DEFAULTS, None).image_steps is None


@pytest.mark.parametrize("request_, message", [
    ({"guidance": -1}, "guidance"), ({"guidance": float("nan")}, "guidance"), ({"steps": 0}, "steps"),
    ({"steps": 1001}, "steps"), ({"candidates": 0}, "candidates"), ({"candidates": MAX_CANDIDATES + 1}, "candidates"),
    ({"candidates": 2.5}, "candidates"), ({"candidates": True}, "candidates"),
])
def test_bad_requests_are_refused_with_the_setting_named(request_, message):
    with pytest.raises(RequestError, match=message):
        resolve(MASK_DEFAULTS, IMAGE_DEFAULTS, **request_)


def test_a_bundle_without_a_sampling_section_falls_back_to_the_one_set_of_defaults():
    assert bundle_sampling({}, MASK) == FALLBACK[MASK]
    assert bundle_sampling({"sampling": {"steps": 7}}, MASK) == {**FALLBACK[MASK], "steps": 7}
    assert bundle_sampling({}, IMAGE) == FALLBACK[IMAGE]


def test_panel_defaults_are_the_resolved_settings_of_the_bundled_models():
    configs = {kind: json.loads((BUNDLED / kind / "config.json").read_text()) for kind in (MASK, IMAGE)}
    expected = resolve(bundle_sampling(configs[MASK], MASK), bundle_sampling(configs[IMAGE], IMAGE))
    panel = panel_defaults(BUNDLED)
    assert (panel["guidance"], panel["steps"], panel["image_steps"], panel["candidates"]) == (
        expected.guidance, expected.mask_steps, expected.image_steps, expected.candidates)
    norm = configs[MASK]["volume_normalisation"]
    assert panel["trained_range_ml"] == (norm["min_ml"], norm["max_ml"])


def test_panel_defaults_without_bundles_or_with_a_broken_one(tmp_path):
    assert panel_defaults(tmp_path) == {}
    (tmp_path / MASK).mkdir()
    (tmp_path / MASK / "config.json").write_text(json.dumps({"sampling": {"steps": -3}}))
    assert panel_defaults(tmp_path) == {"models_dir": str(tmp_path)}


def test_what_slicers_process_reads_imports_neither_torch_nor_numpy():
    code = ("import sys; from VentricleSynthLib.generation.settings import panel_defaults; "
            "from VentricleSynthLib.bundles.store import describe, BUNDLED; panel_defaults(BUNDLED); describe(); "
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
