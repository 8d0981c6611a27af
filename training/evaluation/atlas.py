"""The atlas-registration baseline of the experiment, standing in for SynthSeg: the committed template
(training/data/templates.py) registered to each T1 with SimpleITK (moments-centred affine by Mattes mutual
information, then multi-resolution diffeomorphic demons after histogram matching), its ventricle labels warped
with nearest neighbour. SimpleITK is imported inside the functions (the `eval` extra).
"""

from __future__ import annotations

import os

import numpy as np

from VentricleSynthLib.affines import spacing_of
from VentricleSynthLib.io.nifti import Volume
from VentricleSynthLib.labels import VENTRICLE_LABELS

from training.data.templates import load_committed
from training.stage_configs import RegistrationConfig


def _to_sitk(array: np.ndarray, affine: np.ndarray):
    """numpy (i, j, k) + voxel->RAS affine -> SimpleITK image in ITK's LPS world."""
    import SimpleITK as sitk

    spacing = spacing_of(affine)
    lps = np.diag([-1.0, -1.0, 1.0])
    direction = lps @ affine[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in lps @ affine[:3, 3]])
    return img


def _from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


class AtlasSegmenter:
    """Register the committed template to a T1 with SimpleITK and carry its ventricle labels over."""

    def __init__(self, settings: RegistrationConfig | None = None):
        import SimpleITK as sitk

        self.settings = settings or RegistrationConfig()
        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        template = load_committed()
        t1 = template.t1.astype(np.float32)
        vent = np.where(np.isin(template.label, VENTRICLE_LABELS), template.label, 0).astype(np.int16)
        self.moving = {"head": _to_sitk(t1, template.affine),
                       "brain": _to_sitk(np.where(template.brain_mask, t1, 0).astype(np.float32), template.affine)}
        self.labels = _to_sitk(vent, template.affine)
        self._cache: dict = {}

    def _movings(self, spacing: float) -> dict:
        """The template images at (about) the target's resolution: registration cost follows the voxel count."""
        import SimpleITK as sitk

        key = round(max(spacing, 1e-3), 2)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        out = {}
        for name, image in self.moving.items():
            current = min(image.GetSpacing())
            if spacing <= current * 1.25:
                out[name] = image
                continue
            size = [max(8, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
            smooth = sitk.SmoothingRecursiveGaussian(image, 0.5 * (spacing - current))
            out[name] = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                                      [spacing] * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)
        self._cache = {key: out}
        return out

    def _method(self, iterations: int, shrink, smooth):
        import SimpleITK as sitk

        s = self.settings
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(s.sampling), int(s.seed))
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=int(iterations),
                                                     gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(shrink))
        reg.SetSmoothingSigmasPerLevel(list(smooth))
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return reg

    def _affine(self, fixed, moving):
        import SimpleITK as sitk

        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        reg = self._method(self.settings.affine_iterations, (4, 2, 1), (4.0, 2.0, 0.0))
        reg.SetInitialTransform(initial, inPlace=True)
        reg.Execute(fixed, moving)
        return initial, reg.GetMetricValue()

    def segment(self, image: Volume) -> np.ndarray:
        """FreeSurfer ventricle labels on `image`'s grid."""
        import SimpleITK as sitk

        arr = image.array.astype(np.float32)
        lo, hi = np.percentile(arr, [0.5, 99.5])
        fixed = _to_sitk(np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32), image.affine)
        movings = self._movings(min(fixed.GetSpacing()))
        best = None
        for name, moving in movings.items():  # with or without skull: keep the better match
            transform, metric = self._affine(fixed, moving)
            if best is None or metric < best[2]:
                best = (name, transform, metric)
        name, affine, _ = best
        transform = affine
        if int(self.settings.demons_iterations) > 0:
            moved = sitk.Resample(movings[name], fixed, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            moved = sitk.HistogramMatching(moved, fixed, numberOfHistogramLevels=128, numberOfMatchPoints=15,
                                           thresholdAtMeanIntensity=True)
            field = self._demons(fixed, moved)
            transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])
        warped = sitk.Resample(self.labels, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
        return _from_sitk(warped).astype(np.int16)

    def _demons(self, fixed, moving):
        """Multi-resolution diffeomorphic demons (coarse to fine); returns a displacement field on `fixed`'s grid."""
        import SimpleITK as sitk

        s = self.settings
        field = None
        for factor in s.demons_levels:
            if factor > 1:
                f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 0.5 * factor * min(fixed.GetSpacing())),
                                [int(factor)] * 3)
                m = sitk.Resample(sitk.SmoothingRecursiveGaussian(moving, 0.5 * factor * min(fixed.GetSpacing())),
                                  f, sitk.Transform(), sitk.sitkLinear, 0.0)
            else:
                f, m = fixed, moving
            if field is None:
                init = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64)
                init.CopyInformation(f)
            else:
                init = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            demons = sitk.DiffeomorphicDemonsRegistrationFilter()
            demons.SetNumberOfIterations(int(s.demons_iterations))
            demons.SetSmoothDisplacementField(True)
            demons.SetStandardDeviations(float(s.demons_sigma))
            field = demons.Execute(f, m, init)
        return field
