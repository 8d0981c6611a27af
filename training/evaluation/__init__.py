"""Scoring segmentations against references, the report, and the registration (atlas) baseline."""
