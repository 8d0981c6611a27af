"""Training the nnU-Net v2 ventricle segmenter and exporting its bundle."""
