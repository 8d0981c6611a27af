"""Template cohort: synthetic subjects from one labelled template, each with a requested ventricle volume.

Per case (seeded by (seed, distribution, index), so any subset can be rebuilt identically):
a random affine and a random diffeomorphic warp give anatomical variety; a ventricle
attraction flow, whose strength is solved by root finding, grows or shrinks the ventricles to
the requested volume on the output grid; then bias field, gamma, blur and noise vary appearance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.data.templates import Template
from training.data.warps import random_affine, random_velocity
from training.stage_configs import TEMPLATE_DATASETS
from VentricleSynthLib.imaging.flows import integrate_velocity, mask_attraction_field, sample_field, solve_strength
from VentricleSynthLib.imaging.geometry import percentile_normalise, ras_grid, world_bbox
from VentricleSynthLib.labels import VENTRICLE_LABELS
from VentricleSynthLib.volumes import tiv_ml, ventricle_volume_ml, voxel_volume_ml


@dataclass
class TemplateCohortSettings:
    """How the template cohort varies anatomy and reaches each requested ventricle volume."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    max_rotation_deg: float = 5.0
    scale_range: tuple[float, float] = (1.03, 1.18)  # template units per output mm: MNI brains are large
    max_translation_mm: float = 3.0
    warp_amplitude_mm: float = 2.5
    ventricle_sigma_mm: float = 8.0
    field_spacing_mm: float = 4.0
    skull_fraction: float = 0.5
    tolerance: float = 0.02  # relative volume tolerance of the root finder
    max_iterations: int = 30


def sample_targets(distribution: str, count: int, rng: np.random.Generator,
                   low_ml: float | None = None, high_ml: float | None = None) -> np.ndarray:
    """Ventricle volumes (mL). natural: most 10-40 mL with a tail to ~120 mL; enlarged (the hold-out)
    and uniform (even coverage for the generators): uniform between the bounds."""
    if distribution == "natural":
        normal = np.exp(rng.normal(np.log(24.0), 0.35, count))
        tail = rng.uniform(40.0, 120.0, count)
        values = np.where(rng.random(count) < 0.15, tail, normal)
        return np.clip(values, low_ml or 8.0, high_ml or 130.0)
    if distribution == "enlarged":
        return rng.uniform(low_ml or 60.0, high_ml or 150.0, count)
    if distribution == "uniform":
        return rng.uniform(low_ml or 8.0, high_ml or 150.0, count)
    raise ValueError(f"unknown distribution {distribution!r}; expected one of {TEMPLATE_DATASETS}")


class TemplateCohort:
    """Generates cases from a template on the profile grid (centred on the template's brain)."""

    def __init__(self, template: Template, settings: TemplateCohortSettings):
        self.template = template
        self.settings = settings
        lo, hi = world_bbox(template.brain_mask, template.affine)
        self.centre = (lo + hi) / 2
        self.grid = ras_grid(settings.spacing, settings.shape, self.centre)
        self._ijk_world = (self.grid.affine[:3, :3] @ np.indices(self.grid.shape, dtype=np.float32).reshape(3, -1)
                           + self.grid.affine[:3, 3:4])
        vmask = np.isin(template.label, VENTRICLE_LABELS)
        vlo, vhi = world_bbox(vmask, template.affine)
        margin = 4 * settings.ventricle_sigma_mm
        field_shape = np.ceil((vhi - vlo + 2 * margin) / settings.field_spacing_mm).astype(int) + 1
        self.field_grid = ras_grid(settings.field_spacing_mm, field_shape, (vlo + vhi) / 2)
        self.attraction = mask_attraction_field(vmask, template.affine, settings.ventricle_sigma_mm, self.field_grid)
        self._tmpl_inv = np.linalg.inv(template.affine).astype(np.float32)
        self._ventricles = vmask.astype(np.uint8)
        self._voxel_ml = voxel_volume_ml(self.grid.affine)

    def _to_template(self, world: np.ndarray, order: int, array: np.ndarray) -> np.ndarray:
        ijk = self._tmpl_inv[:3, :3] @ world + self._tmpl_inv[:3, 3:4]
        return ndimage.map_coordinates(array, ijk, order=order, mode="constant", cval=0).reshape(self.grid.shape)

    def _ventricle_flow(self, strength: float, points: np.ndarray) -> np.ndarray:
        if strength == 0:
            return points
        disp = integrate_velocity(strength * self.attraction, self.field_grid)
        return points + sample_field(disp, self.field_grid, points)

    def solve_strength(self, points: np.ndarray, target_ml: float) -> tuple[float, float]:
        """Root-find the attraction strength (mm) that gives `target_ml` of ventricles on the output grid."""
        s = self.settings

        def volume(strength: float) -> float:
            warped = self._ventricle_flow(strength, points)
            return float(self._to_template(warped, 0, self._ventricles).sum()) * self._voxel_ml

        tolerance = max(s.tolerance * target_ml, 0.5 * self._voxel_ml)
        return solve_strength(volume, target_ml, -30.0, 60.0, tolerance, s.max_iterations)

    def make_case(self, target_ml: float, rng: np.random.Generator) -> dict:
        """One subject: returns image (float32 [0,1]), label (int16 schema), affine and the record."""
        s = self.settings
        affine = random_affine(rng, s.max_rotation_deg, s.scale_range, s.max_translation_mm)
        velocity = random_velocity(self.grid, rng, s.warp_amplitude_mm)
        disp = integrate_velocity(velocity, self.grid).reshape(3, -1)
        local = self._ijk_world + disp - self.centre[:, None]
        points = (affine[:3, :3] @ local + affine[:3, 3:4] + self.centre[:, None]).astype(np.float32)
        strength, _ = self.solve_strength(points, target_ml)
        warped = self._ventricle_flow(strength, points)
        label = self._to_template(warped, 0, self.template.label).astype(np.int16)
        t1 = self._to_template(warped, 1, self.template.t1.astype(np.float32))
        skull = bool(rng.random() < s.skull_fraction)
        image = self.appearance(t1 if skull else t1 * (label > 0), rng)
        return {
            "image": image,
            "label": label,
            "affine": self.grid.affine.copy(),
            "target_ml": float(target_ml),
            "ventricle_ml": ventricle_volume_ml(label, self.grid.affine),
            "tiv_ml": tiv_ml(label, self.grid.affine),
            "strength_mm": round(strength, 3),
            "skull": skull,
        }

    def appearance(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """SynthSeg-style intensity variation: resolution blur, bias field, gamma, noise; then [0, 1]."""
        out = ndimage.gaussian_filter(image, rng.uniform(0.0, 0.8, 3))
        coarse = rng.normal(0.0, 0.15, (4, 4, 4))
        bias = ndimage.zoom(coarse, [n / 4 for n in image.shape], order=3, mode="nearest")
        out = out * np.exp(bias[: image.shape[0], : image.shape[1], : image.shape[2]])
        out = percentile_normalise(out, 0.5, 99.5)
        out = out ** np.exp(rng.normal(0.0, 0.15))
        out = out + rng.normal(0.0, rng.uniform(0.0, 0.03), out.shape)
        return percentile_normalise(out.astype(np.float32), 0.5, 99.5)


