"""The numbers of the comparison, from label maps in the schema's FreeSurfer numbers: mL per ventricle, the
ventricle-union Dice between tools and against a scan's label map (VentricleSynthLib's volumes and metrics)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from VentricleSynthLib.labels import ventricle_mask
from VentricleSynthLib.metrics import dice
from VentricleSynthLib.volumes import label_volumes_ml, ventricle_volume_ml

# structure -> schema labels; the sided ones only for tools that separate the hemispheres
STRUCTURES = {"lateral_left": (4,), "lateral_right": (43,), "lateral": (4, 43), "inferior_lateral": (5, 44),
              "third": (14,), "fourth": (15,)}
SIDED = ("lateral_left", "lateral_right")


def volumes_ml(label_map: np.ndarray, affine: np.ndarray, sided: bool) -> dict[str, float | None]:
    """mL per structure (None for a side the tool does not tell) and the ventricle total."""
    per_label = label_volumes_ml(label_map, affine)
    out = {name: (round(sum(per_label[lab] for lab in labels), 2) if sided or name not in SIDED else None)
           for name, labels in STRUCTURES.items()}
    out["total"] = round(ventricle_volume_ml(label_map, affine), 2)
    return out


def union_dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(dice(ventricle_mask(a), ventricle_mask(b)), 4)


def pairwise_dice(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Ventricle-union Dice of every pair of tools, keyed 'a vs b' in the tools' order."""
    return {f"{a} vs {b}": union_dice(maps[a], maps[b]) for a, b in combinations(maps, 2)}
