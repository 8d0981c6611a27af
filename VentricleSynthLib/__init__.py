"""VentricleSynth engine: label schema, NIfTI I/O and geometry, volumes, generators and segmenter.

Pure Python/torch. Never imports qt or slicer at module level (see design.md: arrows point down).
"""

__version__ = "0.1.0"
