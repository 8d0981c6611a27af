"""Synthetic cohorts: K labelled pairs whose ventricle volumes follow a requested distribution, with QC."""
