"""Slicer glue: MRML nodes <-> arrays, worker tasks, dependencies, worker environment (qt/slicer imported lazily)."""
