"""Exact-volume refinement: a generated label map moved to the asked ventricle volume by a smooth flow.

The flow is the template cohort's: a stationary velocity field pointing into the ventricular system (the
gradient of its Gaussian-smoothed mask, unit peak), scaled by a strength in mm and integrated by scaling and
squaring, so the warp is diffeomorphic; tissue is pulled in (ventricles grow) or pushed aside (they shrink).
The strength is found by root finding on the ventricle volume of the warped map. The label map is resampled by
label shares: each label's indicator is pulled back with linear interpolation, a voxel is ventricle where the
ventricles' share is at least one half (the ventricle label with the largest share), otherwise the other label
with the largest share. Labels stay integral (no new ones), and a thin diagonal horn stays face-connected under
squeezes of 5-35 % (nearest-neighbour resampling cuts it at 35 %; not every squeeze: a flow that leaves the
ventricles fragmented backs off, see `refine`). The image is synthesised from the
refined map.

A unit-peak velocity integrated over unit time moves no point further than |strength| mm, so bounding the
strength by MAX_DISPLACEMENT_MM bounds the displacement: a volume the flow cannot reach within that bound is
not forced (the closest reachable one is kept, with a warning).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from VentricleSynthLib.imaging.flows import integrate_velocity, mask_attraction_field, sample_field, solve_strength
from VentricleSynthLib.imaging.geometry import ras_grid, world_bbox
from VentricleSynthLib.labels import MAIN_CLASSES, VENTRICLE_LABELS
from VentricleSynthLib.morphology import connected_components
from VentricleSynthLib.volumes import too_many_pieces, ventricle_pieces, ventricle_volume_ml, voxel_volume_ml

TOLERANCE = 0.005  # relative volume error the root finder stops at (or half a voxel, if larger)
MAX_DISPLACEMENT_MM = 10.0  # plausibility bound on any voxel's displacement (measured: benchmarks/volume_control)
SIGMA_MM = 8.0  # smoothing of the ventricle mask whose gradient is the flow: the flow's reach
FIELD_SPACING_MM = 4.0  # lattice of the velocity field
MAX_ITERATIONS = 30
BACK_OFF = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)  # strengths tried when the full flow is implausible
# what a pair's record and a cohort's CSV keep of a refinement
RECORD_FIELDS = ("got_ml_before_refinement", "refine_strength_mm", "max_displacement_mm", "mean_displacement_mm")


class _Flow:
    """The attraction flow of one label map, evaluated on the voxels it can move (within 4 sigma)."""

    def __init__(self, label: np.ndarray, affine: np.ndarray):
        self.affine = np.asarray(affine, dtype=np.float64)
        ventricles = np.isin(label, VENTRICLE_LABELS)
        lo, hi = world_bbox(ventricles, self.affine)
        margin = 4 * SIGMA_MM
        self.field_grid = ras_grid(FIELD_SPACING_MM, np.ceil((hi - lo + 2 * margin) / FIELD_SPACING_MM) + 1,
                                   (lo + hi) / 2)
        self.attraction = mask_attraction_field(ventricles, self.affine, SIGMA_MM, self.field_grid)
        inverse = np.linalg.inv(self.affine)
        self.region = self._region(label.shape, lo - margin, hi + margin, inverse)
        self.inverse = inverse.astype(np.float32)
        ijk = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in self.region], indexing="ij")).reshape(3, -1)
        self.points = (self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]).astype(np.float32)
        self.ventricles = ventricles.astype(np.float32)
        self.outside_ml = (ventricles.sum() - ventricles[self.region].sum()) * voxel_volume_ml(self.affine)

    @staticmethod
    def _region(shape, lo_world, hi_world, inverse: np.ndarray) -> tuple[slice, ...]:
        corners = np.array([[x, y, z] for x in (lo_world[0], hi_world[0]) for y in (lo_world[1], hi_world[1])
                            for z in (lo_world[2], hi_world[2])]).T
        ijk = inverse[:3, :3] @ corners + inverse[:3, 3:4]
        first = np.clip(np.floor(ijk.min(axis=1)), 0, np.array(shape) - 1).astype(int)
        last = np.clip(np.ceil(ijk.max(axis=1)), 0, np.array(shape) - 1).astype(int)
        return tuple(slice(a, b + 1) for a, b in zip(first, last))

    def displacement(self, strength: float) -> np.ndarray:
        """(3, N) displacement in mm of the region's voxels."""
        if strength == 0:
            return np.zeros_like(self.points)
        disp = integrate_velocity(strength * self.attraction, self.field_grid)
        return sample_field(disp, self.field_grid, self.points)

    def _pulled_back(self, indicator: np.ndarray, ijk: np.ndarray) -> np.ndarray:
        """The share of `indicator` (0/1 float32) at the pulled-back points: linear interpolation, on the region."""
        shape = tuple(s.stop - s.start for s in self.region)
        return ndimage.map_coordinates(indicator, ijk, order=1, mode="constant", cval=0.0).reshape(shape)

    def _source_points(self, disp: np.ndarray) -> np.ndarray:
        where = self.points + disp
        return self.inverse[:3, :3] @ where + self.inverse[:3, 3:4]

    def warp_ventricles(self, disp: np.ndarray) -> np.ndarray:
        """The region's voxels that are at least half ventricle after the flow."""
        return self._pulled_back(self.ventricles, self._source_points(disp)) >= 0.5

    def warp_labels(self, label: np.ndarray, disp: np.ndarray) -> np.ndarray:
        """`label` on the region after the flow, by label shares: ventricle where `warp_ventricles`, with the
        ventricle label of largest share there; elsewhere the non-ventricle label of largest share."""
        ijk = self._source_points(disp)
        inside = self._pulled_back(self.ventricles, ijk) >= 0.5
        shape = inside.shape
        best = {True: (np.full(shape, -1.0, np.float32), np.zeros(shape, label.dtype)),
                False: (np.full(shape, -1.0, np.float32), np.zeros(shape, label.dtype))}
        for value in np.unique(label):
            share, chosen = best[bool(np.isin(value, VENTRICLE_LABELS))]
            here = self._pulled_back((label == value).astype(np.float32), ijk)
            better = here > share
            share[better], chosen[better] = here[better], value
        return np.where(inside, best[True][1], best[False][1]).astype(label.dtype)

    def volume_ml(self, strength: float) -> float:
        inside = self.warp_ventricles(self.displacement(strength)).sum() * voxel_volume_ml(self.affine)
        return float(inside + self.outside_ml)


def plausibility(label: np.ndarray) -> dict:
    """Main classes present, brain pieces, ventricle pieces (`volumes.ventricle_pieces`)."""
    return {"main_classes_present": bool(np.isin(MAIN_CLASSES, label).all()),
            "brain_pieces": connected_components(label > 0)[1],
            "ventricle_pieces": ventricle_pieces(label)[0]}


def plausible(checks: dict) -> bool:
    """A label map's `plausibility` passes: main classes present, one brain, ventricles not fragmented
    (`volumes.fragmented`)."""
    return checks["main_classes_present"] and checks["brain_pieces"] == 1 and \
        not too_many_pieces(checks["ventricle_pieces"])


def made_worse(checks: dict, sampled: dict) -> list[str]:
    """What refinement broke, in words: a main class the sampled map had, a brain in more pieces, ventricles
    fragmented that were not, or in more pieces than fragmented ones had (empty: nothing)."""
    out = []
    if sampled["main_classes_present"] and not checks["main_classes_present"]:
        out.append("a main class is lost")
    if checks["brain_pieces"] > max(1, sampled["brain_pieces"]):
        out.append(f"the brain is in {checks['brain_pieces']} pieces")
    if too_many_pieces(checks["ventricle_pieces"]) and checks["ventricle_pieces"] > sampled["ventricle_pieces"]:
        out.append(f"the ventricles are fragmented ({sampled['ventricle_pieces']} -> {checks['ventricle_pieces']} "
                   "pieces)")
    return out


def unrefined(label: np.ndarray, affine: np.ndarray) -> dict:
    """The record of a label map left as sampled (refinement off, or nothing to move)."""
    return {"got_ml_before_refinement": round(ventricle_volume_ml(label, affine), 3), "refine_strength_mm": 0.0,
            "max_displacement_mm": 0.0, "mean_displacement_mm": 0.0, "warnings": []}


def _moved(flow: _Flow, label: np.ndarray, strength: float) -> tuple[np.ndarray, dict]:
    """`label` moved by the flow at `strength`, and the displacement part of the record."""
    disp = flow.displacement(strength)
    out = label.copy()
    out[flow.region] = flow.warp_labels(label, disp)
    moved = np.zeros(label.shape, np.float32)
    moved[flow.region] = np.sqrt((disp ** 2).sum(axis=0)).reshape(out[flow.region].shape)
    brain = out > 0
    return out, {"refine_strength_mm": round(strength, 3),
                 "max_displacement_mm": round(float(moved[brain].max(initial=0.0)), 3),
                 "mean_displacement_mm": round(float(moved[brain].mean()) if brain.any() else 0.0, 3)}


def refine(label: np.ndarray, affine: np.ndarray, asked_ml: float) -> tuple[np.ndarray, dict]:
    """The label map moved to `asked_ml` of ventricles, and the record: got_ml_before_refinement,
    refine_strength_mm, max_displacement_mm (any brain voxel), mean_displacement_mm (over the brain's voxels),
    the plausibility measures and `warnings`.

    A flow that breaks the anatomy (`made_worse`) is retried at BACK_OFF fractions of its strength and the
    strongest one that breaks nothing is kept (the map as sampled if none), with a warning: a label map a little
    off the asked volume rather than one with fragmented ventricles, a lost class or a split brain."""
    before = ventricle_volume_ml(label, affine)
    record = unrefined(label, affine)
    tolerance_ml = max(TOLERANCE * asked_ml, 0.5 * voxel_volume_ml(affine))
    sampled = plausibility(label)
    if before == 0:
        record["warnings"].append("refinement skipped: the generated label map has no ventricles")
        return label, {**record, **sampled, "plausible": plausible(sampled)}
    if abs(before - asked_ml) <= tolerance_ml:
        return label, {**record, **sampled, "plausible": plausible(sampled)}
    flow = _Flow(label, affine)
    bracket = (0.0, MAX_DISPLACEMENT_MM) if asked_ml > before else (-MAX_DISPLACEMENT_MM, 0.0)
    strength, _ = solve_strength(flow.volume_ml, float(asked_ml), *bracket, tolerance_ml, MAX_ITERATIONS,
                                 known={0.0: before})
    out, moved = _moved(flow, label, strength)
    checks = plausibility(out)
    broken = made_worse(checks, sampled)
    if broken:  # the strongest fraction of the flow that breaks nothing, else the map as sampled
        for fraction in BACK_OFF:
            out, moved = _moved(flow, label, strength * fraction)
            checks = plausibility(out)
            if not made_worse(checks, sampled):
                break
        else:
            out, moved, checks = label, unrefined(label, affine), sampled
    got = ventricle_volume_ml(out, affine)
    record.update({k: moved[k] for k in RECORD_FIELDS[1:]})
    if broken:
        record["warnings"].append(
            f"refinement stopped at {got:.1f} mL (asked {asked_ml:g}, sampled {before:.1f}): the full flow gave a "
            f"label map where {' and '.join(broken)}")
    elif abs(got - asked_ml) > tolerance_ml and abs(strength) >= MAX_DISPLACEMENT_MM:
        record["warnings"].append(
            f"refinement stopped at {got:.1f} mL (asked {asked_ml:g}, sampled {before:.1f}): reaching the asked "
            f"volume would move tissue by more than {MAX_DISPLACEMENT_MM:g} mm")
    ok = plausible(checks)
    if not ok:
        record["warnings"].append(f"refined label map fails a plausibility check: {checks}")
    return out, {**record, **checks, "plausible": ok}
