"""Headless training and evaluation: `python training/train.py STAGE --config {tiny,cpu,paper} --work DIR`."""
