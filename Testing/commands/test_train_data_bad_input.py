"""`train.py data` (template cohort and `--source` import) given bad input: exit 2, exactly one `error:` line,
no traceback, nothing written and every input byte-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testing_helpers import assert_one_error, labelled_heads_folder, snapshot

REPO = Path(__file__).resolve().parents[2]
SHAPE = (30, 36, 30)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(np.asarray(SHAPE) - 1)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def train(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "training" / "train.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


IMPORT = ("--images", "{case}/t1.nii.gz", "--labels", "{case}/seg.nii.gz")


@pytest.mark.parametrize("source", [False, True], ids=["template", "import"])
def test_work_under_a_regular_file(tmp_path, source):
    src = labelled_heads_folder(tmp_path / "src")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    before = snapshot(tmp_path)
    extra = ("--source", src, *IMPORT) if source else ()
    done = train("data", "--config", "tiny", "--work", blocker / "work", *extra)
    assert_one_error(done.returncode, done.stderr, "--work", "is a file, not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("source", [False, True], ids=["template", "import"])
def test_work_that_cannot_be_created(tmp_path, source):
    src = labelled_heads_folder(tmp_path / "src")
    before = snapshot(tmp_path)
    extra = ("--source", src, *IMPORT) if source else ()
    done = train("data", "--config", "tiny", "--work", "/proc/ventriclesynth-test/work", *extra)
    assert_one_error(done.returncode, done.stderr, "cannot write to --work")
    assert snapshot(tmp_path) == before and not Path("/proc/ventriclesynth-test").exists()


def test_import_into_its_own_source_is_refused(tmp_path):
    """WORK/data/user would be the source itself (or inside it): the user's data would be replaced."""
    work = tmp_path / "work"
    src = labelled_heads_folder(work / "data" / "user")
    for source in (src, work / "data", work):
        before = snapshot(tmp_path)
        done = train("data", "--config", "tiny", "--work", work, "--source", source, *IMPORT)
        assert_one_error(done.returncode, done.stderr, "source")
        assert snapshot(tmp_path) == before


def test_import_of_nothing_but_ct_and_label_maps_writes_nothing(tmp_path):
    src = labelled_heads_folder(tmp_path / "src", cases=2)
    ct = nib.load(str(src / "case000" / "t1.nii.gz"))
    _save(src / "case000" / "t1.nii.gz", (np.asarray(ct.dataobj) * 10 - 1000).astype(np.float32))
    _save(src / "case001" / "t1.nii.gz", np.asarray(nib.load(str(src / "case001" / "seg.nii.gz")).dataobj))
    before = snapshot(src)
    done = train("data", "--config", "tiny", "--work", tmp_path / "work", "--source", src, *IMPORT)
    assert_one_error(done.returncode, done.stderr, "no valid case", "CT", "label map")
    assert snapshot(src) == before and not (tmp_path / "work").exists()
