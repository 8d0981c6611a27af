"""Ventricle-volume distributions of a synthetic cohort: which volume (mL) sample `index` asks for.

Specs:
  uniform[:LO-HI]    spread evenly over LO..HI (default: the mask bundle's trained range). Sample i asks
                     LO + frac(u0 + i*g) * (HI - LO) with g the golden-ratio conjugate (a low-discrepancy
                     sequence, u0 from the base seed): every prefix of the cohort covers the range evenly,
                     which independent random draws do not for a dozen samples.
  buckets[:LO-HI]    the authors' final set: ten equal buckets over the range, sample i in bucket i mod 10,
                     uniformly jittered inside it (the bucket centre +- half a bucket).
  match:CASES.csv    follow an existing cohort's histogram: the same sequence through the inverse CDF of the
                     histogram of the CSV's volume column (ventricle_ml, got_ml, volume_ml, asked_ml or
                     target_ml; a folder means its cases.csv).
  list:V1,V2,...     explicit volumes (also written without `list:`); sample i asks V[i mod n].

A sample's volume and seed depend only on (base seed, index), never on the count, the shard or the
order of work, so shards, resumed runs and longer runs agree sample by sample.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VentricleSynthLib.errors import RequestError

BUCKETS = 10
MATCH_COLUMNS = ("ventricle_ml", "got_ml", "volume_ml", "asked_ml", "target_ml")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*$")
SPEC_HELP = "uniform[:LO-HI], buckets[:LO-HI], match:CASES.csv, or list:V1,V2,... (mL)"


def sample_seed(base: int, index: int) -> int:
    """The generator seed of sample `index`: a hash of (base seed, index), so runs with nearby base seeds
    share no noise (seed + index would) and any sample can be redone alone (`generate --seed`)."""
    return int(np.random.SeedSequence([int(base), int(index)]).generate_state(1, np.uint32)[0])


def check_seed(seed, what: str = "--seed") -> int:
    """The base seed as an int in 0..2**63-1 (numpy's SeedSequence needs it >= 0, torch's generators fit 63 bits);
    bools and floats are refused rather than silently truncated."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise RequestError(f"{what} must be an integer in 0..2**63-1, got {seed!r}")
    return int(seed)


@dataclass(frozen=True)
class Distribution:
    kind: str
    low: float | None = None  # uniform, buckets: the range (None: the trained range, see `bind`)
    high: float | None = None
    values: tuple[float, ...] = ()  # list: the volumes; match: the cohort's volumes
    source: str = ""  # match: the CSV read

    # --- identity ----------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """Normalised spec: equal specs draw equal volumes. A match is identified by its values' digest only,
        so the same CSV copied or moved elsewhere is the same distribution."""
        if self.kind == "list":
            return "list:" + ",".join(f"{v:g}" for v in self.values)
        if self.kind == "match":
            digest = hashlib.sha256(np.asarray(self.values, np.float64).tobytes()).hexdigest()[:16]
            return f"match#{digest}"
        return self.kind if self.low is None else f"{self.kind}:{self.low:g}-{self.high:g}"

    def describe(self) -> str:
        if self.kind == "list":
            shown = ", ".join(f"{v:g}" for v in self.values[:8]) + (" ..." if len(self.values) > 8 else "")
            return f"explicit list of {len(self.values)} volumes ({shown} mL)"
        if self.kind == "match":
            return (f"matching the histogram of {len(self.values)} volumes in {self.source} "
                    f"({min(self.values):.1f}-{max(self.values):.1f} mL)")
        what = "uniform" if self.kind == "uniform" else f"{BUCKETS} buckets (jittered)"
        return f"{what} over {self.low:g}-{self.high:g} mL" if self.low is not None else what

    @property
    def natural_count(self) -> int | None:
        """The count a list implies when none is given."""
        return len(self.values) if self.kind == "list" else None

    def bind(self, trained_range: tuple[float, float]) -> "Distribution":
        """Fill an open range (`uniform`, `buckets`) with the mask bundle's trained range."""
        if self.kind in ("uniform", "buckets") and self.low is None:
            lo, hi = (round(float(v), 1) for v in trained_range)
            return Distribution(self.kind, lo, hi)
        return self

    # --- draws -------------------------------------------------------------------------------------
    def volume(self, index: int, seed: int) -> float:
        index, seed = int(index), check_seed(seed)
        if self.kind == "list":
            return float(self.values[index % len(self.values)])
        if self.kind in ("uniform", "buckets") and self.low is None:
            raise ValueError("bind() the distribution to the trained range first")
        if self.kind == "buckets":
            jitter = np.random.default_rng([seed, index, 1]).uniform(-0.5, 0.5)
            u = ((index % BUCKETS) + 0.5 + jitter) / BUCKETS
            return float(self.low + u * (self.high - self.low))
        u0 = np.random.SeedSequence([seed]).generate_state(1, np.uint32)[0] / 2.0**32
        u = (u0 + (index + 1) * _GOLDEN) % 1.0
        if self.kind == "uniform":
            return float(self.low + u * (self.high - self.low))
        return float(_inverse_histogram_cdf(np.asarray(self.values), u))

    def volumes(self, count: int, seed: int) -> np.ndarray:
        return np.array([self.volume(i, seed) for i in range(int(count))], dtype=np.float64)


def _inverse_histogram_cdf(values: np.ndarray, u: float) -> float:
    """The volume at quantile `u` of the histogram of `values` (linear inside each bin), so draws follow the
    histogram's shape rather than repeating the listed values."""
    if values.min() == values.max():
        return float(values[0])
    counts, edges = np.histogram(values, bins="auto")
    cdf = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
    return float(np.interp(u, cdf, edges))


def _parse_range(kind: str, text: str) -> tuple[float, float]:
    m = _RANGE.match(text)
    if not m:
        raise RequestError(f"distribution {kind}:{text}: expected a range LO-HI in mL, e.g. {kind}:20-140")
    lo, hi = float(m.group(1)), float(m.group(2))
    if not (0 < lo < hi) or not math.isfinite(hi):
        raise RequestError(f"distribution {kind}:{text}: the range needs 0 < LO < HI (mL)")
    return lo, hi


def _parse_list(text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",")]
    try:
        values = tuple(float(t) for t in items)
    except ValueError:
        raise RequestError(f"distribution list:{text}: expected comma-separated volumes in mL") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise RequestError(f"distribution list:{text}: every volume must be a positive number of mL")
    return values


def read_volumes(path: str | Path) -> tuple[tuple[float, ...], str]:
    """The volume column of a cohort's CSV (or FOLDER/cases.csv): (values, resolved path)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "cases.csv"
    if not path.is_file():
        raise RequestError(f"distribution match:{path}: no such CSV file")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RequestError(f"distribution match:{path}: cannot read the CSV ({exc})") from None
    columns = rows[0].keys() if rows else []
    column = next((c for c in MATCH_COLUMNS if c in columns), None)
    if column is None:
        raise RequestError(f"distribution match:{path}: no volume column (one of {', '.join(MATCH_COLUMNS)})")
    values = []
    for row in rows:
        try:
            v = float(row[column])
        except (TypeError, ValueError):
            continue  # empty cells (e.g. cases without a measurement)
        if math.isfinite(v) and v > 0:
            values.append(v)
    if not values:
        raise RequestError(f"distribution match:{path}: column {column} holds no positive volumes")
    return tuple(values), str(path.resolve())


def parse(spec: str) -> Distribution:
    """A distribution spec -> `Distribution`; a bad spec is a RequestError naming what is wrong."""
    text = (spec or "").strip()
    if not text:
        raise RequestError(f"empty distribution; expected {SPEC_HELP}")
    kind, colon, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("uniform", "buckets"):
        if not colon:
            return Distribution(kind)
        return Distribution(kind, *_parse_range(kind, arg))
    if kind == "match":
        if not arg.strip():
            raise RequestError("distribution match: needs a CSV file, e.g. match:cohort/cases.csv")
        values, source = read_volumes(arg.strip())
        return Distribution("match", values=values, source=source)
    if kind == "list":
        return Distribution("list", values=_parse_list(arg))
    if re.fullmatch(rf"\s*{_NUMBER}\s*(,\s*{_NUMBER}\s*)*", text):
        return Distribution("list", values=_parse_list(text))
    raise RequestError(f"unknown distribution {spec!r}; expected {SPEC_HELP}")
