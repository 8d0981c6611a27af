"""The label schema: FreeSurfer/SynthSeg label numbers, ventricles, names, colours, index maps.

Networks see consecutive indices 0..N-1; files and users see FreeSurfer numbers. Other
conventions (CerebrA, a user CSV) enter through an explicit `LabelMapping`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import LabelSchemaError

# label -> (name, RGB colour) in the FreeSurferColorLUT convention (SynthSeg 2.0's 32 labels + background).
SCHEMA: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("Background", (0, 0, 0)),
    2: ("Left-Cerebral-White-Matter", (245, 245, 245)),
    3: ("Left-Cerebral-Cortex", (205, 62, 78)),
    4: ("Left-Lateral-Ventricle", (120, 18, 134)),
    5: ("Left-Inf-Lat-Vent", (196, 58, 250)),
    7: ("Left-Cerebellum-White-Matter", (220, 248, 164)),
    8: ("Left-Cerebellum-Cortex", (230, 148, 34)),
    10: ("Left-Thalamus", (0, 118, 14)),
    11: ("Left-Caudate", (122, 186, 220)),
    12: ("Left-Putamen", (236, 13, 176)),
    13: ("Left-Pallidum", (12, 48, 255)),
    14: ("3rd-Ventricle", (204, 182, 142)),
    15: ("4th-Ventricle", (42, 204, 164)),
    16: ("Brain-Stem", (119, 159, 176)),
    17: ("Left-Hippocampus", (220, 216, 20)),
    18: ("Left-Amygdala", (103, 255, 255)),
    24: ("CSF", (60, 60, 60)),
    26: ("Left-Accumbens-area", (255, 165, 0)),
    28: ("Left-VentralDC", (165, 42, 42)),
    41: ("Right-Cerebral-White-Matter", (245, 245, 245)),
    42: ("Right-Cerebral-Cortex", (205, 62, 78)),
    43: ("Right-Lateral-Ventricle", (120, 18, 134)),
    44: ("Right-Inf-Lat-Vent", (196, 58, 250)),
    46: ("Right-Cerebellum-White-Matter", (220, 248, 164)),
    47: ("Right-Cerebellum-Cortex", (230, 148, 34)),
    49: ("Right-Thalamus", (0, 118, 14)),
    50: ("Right-Caudate", (122, 186, 220)),
    51: ("Right-Putamen", (236, 13, 176)),
    52: ("Right-Pallidum", (13, 48, 255)),
    53: ("Right-Hippocampus", (220, 216, 20)),
    54: ("Right-Amygdala", (103, 255, 255)),
    58: ("Right-Accumbens-area", (255, 165, 0)),
    60: ("Right-VentralDC", (165, 42, 42)),
}

LABELS: tuple[int, ...] = tuple(SCHEMA)
NUM_CLASSES = len(LABELS)
VENTRICLE_LABELS: tuple[int, ...] = (4, 43, 5, 44, 14, 15)
WHITE_MATTER_LABELS: tuple[int, ...] = (2, 41)
CORTEX_LABELS: tuple[int, ...] = (3, 42)
# the classes every generated brain must contain: cerebral white matter, cortex, lateral ventricles, brain stem
MAIN_CLASSES: tuple[int, ...] = (2, 41, 3, 42, 4, 43, 16)
CSF_LABEL = 24

_LUT_SIZE = max(LABELS) + 1
_LABEL_TO_INDEX = np.full(_LUT_SIZE, -1, dtype=np.int64)
_LABEL_TO_INDEX[list(LABELS)] = np.arange(NUM_CLASSES)
_INDEX_TO_LABEL = np.asarray(LABELS, dtype=np.int16)


def label_name(label: int) -> str:
    return SCHEMA[int(label)][0]


def label_colour(label: int) -> tuple[int, int, int]:
    return SCHEMA[int(label)][1]


def unknown_labels(label_map: np.ndarray, allowed: tuple[int, ...] = LABELS) -> list[int]:
    """Sorted label values present in `label_map` that are not in `allowed`."""
    present = np.unique(label_map)
    return sorted(int(v) for v in present if int(v) not in set(allowed))


def has_integer_values(array: np.ndarray) -> bool:
    """True when every value is a finite whole number: any integer dtype, or floats such as 4.0."""
    array = np.asarray(array)
    return array.dtype.kind != "f" or bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))


def validate_label_map(label_map: np.ndarray, allowed: tuple[int, ...] = LABELS, what: str = "label map") -> None:
    """Raise `LabelSchemaError` unless every value is an integer label of `allowed`."""
    if not has_integer_values(label_map):
        raise LabelSchemaError(f"{what} has non-integer values; expected integer label numbers")
    bad = unknown_labels(label_map, allowed)
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise LabelSchemaError(
            f"{what} has labels outside the schema: {shown} (use a label mapping for other conventions)"
        )


def to_indices(label_map: np.ndarray) -> np.ndarray:
    """FreeSurfer label numbers -> consecutive indices 0..NUM_CLASSES-1 (raises on unknown labels)."""
    validate_label_map(label_map)
    return _LABEL_TO_INDEX[np.asarray(label_map, dtype=np.int64)].astype(np.uint8)


def from_indices(indices: np.ndarray) -> np.ndarray:
    """Consecutive indices -> FreeSurfer label numbers."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= NUM_CLASSES):
        raise LabelSchemaError(f"class index out of range 0..{NUM_CLASSES - 1}")
    return _INDEX_TO_LABEL[idx]


def one_hot(indices: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Indices (spatial) -> float32 one-hot with channels first: (num_classes, *spatial)."""
    idx = np.asarray(indices, dtype=np.int64)
    out = np.zeros((num_classes,) + idx.shape, dtype=np.float32)
    np.put_along_axis(out, idx[None], 1.0, axis=0)
    return out


def ventricle_mask(label_map: np.ndarray) -> np.ndarray:
    """Binary union of the six ventricle labels."""
    return np.isin(label_map, VENTRICLE_LABELS)


@dataclass
class LabelMapping:
    """An explicit table from another convention's label numbers to schema labels.

    `table` maps source label -> schema label. Source values missing from the table are an error
    unless `default` is given (e.g. 0 to drop them).
    """

    name: str
    table: dict[int, int]
    default: int | None = None
    notes: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = sorted({v for v in self.table.values() if v not in SCHEMA})
        if bad:
            raise LabelSchemaError(f"mapping {self.name!r} targets labels outside the schema: {bad}")

    def apply(self, source: np.ndarray) -> np.ndarray:
        src = np.asarray(source)
        if src.dtype.kind == "f":
            if not np.all(np.isfinite(src)) or np.any(src != np.round(src)):
                raise LabelSchemaError(f"label map for mapping {self.name!r} has non-integer values")
        src = src.astype(np.int64)
        values = np.unique(src)
        missing = [int(v) for v in values if int(v) not in self.table]
        if missing and self.default is None:
            raise LabelSchemaError(f"labels {missing[:10]} are not in mapping {self.name!r}")
        out = np.full(src.shape, 0 if self.default is None else self.default, dtype=np.int16)
        for v in values:
            if int(v) in self.table:
                out[src == v] = self.table[int(v)]
        return out

    @classmethod
    def from_csv(cls, path: str | Path, default: int | None = None) -> "LabelMapping":
        """Read a user mapping CSV with columns `source,target` (header required; extra columns ignored)."""
        path = Path(path)
        try:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise LabelSchemaError(f"cannot read label mapping {path}: {exc.strerror}") from None
        if not rows or not {"source", "target"} <= set(rows[0]):
            raise LabelSchemaError(f"label mapping {path} needs a header with columns 'source,target'")
        table: dict[int, int] = {}
        for i, row in enumerate(rows, start=2):
            try:
                table[int(row["source"])] = int(row["target"])
            except (TypeError, ValueError):
                raise LabelSchemaError(f"label mapping {path} line {i}: source/target must be integers") from None
        return cls(name=path.stem, table=table, default=default)


IDENTITY = LabelMapping("freesurfer", {v: v for v in LABELS})


def _cerebra_table() -> dict[int, int]:
    """CerebrA atlas (Manera et al. 2020) labels -> schema. RH labels 1..51, LH = RH + 51.

    Cortical parcels become cortex; vermal lobules cerebellar cortex; basal forebrain and optic
    chiasm ventral diencephalon (SynthSeg has no class for them). Unlabelled brain (white matter,
    extra-cerebral CSF) is not in CerebrA and is derived from intensities by the template builder.
    """
    rh_to_schema_right = {
        # cortical parcels
        30: 42, 42: 42, 43: 42, 36: 42, 24: 42, 10: 42, 3: 42, 33: 42, 34: 42, 7: 42, 12: 42, 15: 42,
        28: 42, 18: 42, 16: 42, 32: 42, 44: 42, 22: 42, 6: 42, 13: 42, 47: 42, 35: 42, 31: 42, 8: 42,
        1: 42, 38: 42, 9: 42, 45: 42, 51: 42, 14: 42, 23: 42,
        11: 16,  # brainstem
        29: 14,  # third ventricle (halves)
        37: 15,  # fourth ventricle (halves)
        17: 60,  # optic chiasm -> ventral DC
        41: 43,  # lateral ventricle
        5: 44,  # inferior lateral ventricle
        46: 47,  # cerebellum grey matter
        39: 46,  # cerebellum white matter
        40: 49, 49: 50, 21: 51, 27: 52, 48: 53, 19: 54, 4: 58, 26: 60,
        25: 60,  # basal forebrain -> ventral DC
        50: 47, 2: 47, 20: 47,  # vermal lobules -> cerebellar cortex
    }
    right_to_left = {42: 3, 43: 4, 44: 5, 46: 7, 47: 8, 49: 10, 50: 11, 51: 12, 52: 13, 53: 17, 54: 18,
                     58: 26, 60: 28, 14: 14, 15: 15, 16: 16}
    table = {0: 0}
    for rh, target in rh_to_schema_right.items():
        table[rh] = target
        table[rh + 51] = right_to_left[target]
    return table


CEREBRA = LabelMapping("cerebra", _cerebra_table())


def mapping_from_spec(spec) -> LabelMapping | None:
    """A `--mapping` option -> LabelMapping: None/'freesurfer'/'synthseg' = schema numbers (None),
    'cerebra' = CEREBRA, anything else = a CSV file with columns source,target."""
    if spec is None or isinstance(spec, LabelMapping):
        return spec
    text = str(spec).strip()
    if text.lower() in ("", "freesurfer", "synthseg", "fs", "none"):
        return None
    if text.lower() == "cerebra":
        return CEREBRA
    return LabelMapping.from_csv(text)
