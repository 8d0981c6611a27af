"""Ventricle segmentation with the bundled nnU-Net v2 model."""
