"""`info` given bad input: a missing models folder is one `error:` line (exit 2); a bundle whose manifest leaves
out a file its loader reads is reported as not verified, and its loader refuses it."""

import json
import shutil

import pytest

from VentricleSynthLib.bundles import format as bundles
from VentricleSynthLib.bundles.store import BUNDLED


def test_info_with_a_missing_models_folder_is_one_error_line(run_cli, tmp_path):
    missing = tmp_path / "no-such-models"
    done = run_cli("info", "--models", missing)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: models folder {missing} (--models) does not exist"]
    assert done.stdout == "" and not missing.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("info", "--models", blocker)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith("is not a folder")


@pytest.fixture
def copied_models(tmp_path):
    root = tmp_path / "models"
    for name in ("mask_generator", "segmenter"):
        shutil.copytree(BUNDLED / name, root / name)
    return root


def _manifest(folder, drop=None, files=None):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = files if files is not None else {k: v for k, v in manifest["files"].items() if k != drop}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_committed_bundles_verify_unchanged():
    for name in ("mask_generator", "image_generator", "segmenter"):
        bundles.verify(BUNDLED / name)


@pytest.mark.parametrize("edit", ["empty manifest", "weights left out", "config left out"])
def test_a_manifest_that_leaves_out_what_the_generator_loads_is_refused(run_cli, copied_models, edit):
    folder = copied_models / "mask_generator"
    weights = folder / "unet.safetensors"
    if edit == "empty manifest":
        _manifest(folder, files={})
    elif edit == "weights left out":
        _manifest(folder, drop="unet.safetensors")
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF  # corrupted weights that the manifest no longer mentions
        weights.write_bytes(bytes(data))
    else:
        _manifest(folder, drop="config.json")
    with pytest.raises(bundles.BundleError, match="does not cover"):
        bundles.verify(folder)
    done = run_cli("info", "--models", copied_models)
    assert done.returncode == 0, done.stderr
    entry = next(m for m in json.loads(done.stdout)["models"] if m["name"] == "mask_generator")
    assert entry["verified"] is False and "does not cover" in entry["error"]


def test_a_segmenter_manifest_without_its_checkpoint_or_plans_is_refused(copied_models):
    folder = copied_models / "segmenter"
    model = json.loads((folder / "config.json").read_text())["nnunet"]["model_folder"]
    for left_out in (f"{model}/fold_0/checkpoint_final.pth", f"{model}/plans.json", f"{model}/dataset.json"):
        shutil.copy(BUNDLED / "segmenter" / "manifest.json", folder / "manifest.json")
        bundles.verify(folder)
        _manifest(folder, drop=left_out)
        with pytest.raises(bundles.BundleError, match="does not cover"):
            bundles.verify(folder)


def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(copied_models):
    folder = copied_models / "mask_generator"
    manifest = json.loads((folder / "manifest.json").read_text())
    _manifest(folder, files={**manifest["files"], "../segmenter/config.json": "0" * 64})
    with pytest.raises(bundles.BundleError, match="outside the bundle"):
        bundles.verify(folder)
