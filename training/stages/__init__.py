"""The stages of training/train.py, one thin file each."""
