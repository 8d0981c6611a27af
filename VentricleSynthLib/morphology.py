"""Connected components of binary masks (scipy.ndimage), with one convention for 'largest piece'."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def connected_components(mask: np.ndarray, full_connectivity: bool = False) -> tuple[np.ndarray, int]:
    """(pieces numbered 1..n, n): face-connected by default, 26-connected with `full_connectivity`."""
    structure = np.ones((3, 3, 3), bool) if full_connectivity else None
    pieces, n = ndimage.label(mask, structure=structure)
    return pieces, int(n)


def piece_sizes(pieces: np.ndarray, n: int) -> np.ndarray:
    """Voxel counts of pieces 1..n."""
    return np.bincount(pieces.ravel(), minlength=n + 1)[1:]


def largest_piece(pieces: np.ndarray, n: int) -> np.ndarray:
    """Mask of the largest piece (the first of equal ones); all False when there is none."""
    if n == 0:
        return np.zeros(pieces.shape, bool)
    return pieces == int(piece_sizes(pieces, n).argmax()) + 1
