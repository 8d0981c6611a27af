"""The paper's experiment: segmenters trained on real, augmented and synthetic data against an atlas baseline."""
