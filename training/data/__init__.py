"""Training data: the template cohort, imports of the user's own data, and the training arrays read back into memory."""
