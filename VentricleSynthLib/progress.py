"""The progress callback every long step takes: `progress(stage, step, steps)` after each of `steps` steps."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[str, int, int], None]
