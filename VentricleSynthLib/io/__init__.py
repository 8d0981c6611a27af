"""Reading and writing files: atomic writes, NIfTI, nnU-Net raw datasets, PNG figures and montages."""
