"""Training data: the template cohort, imports of the user's own data, and cases read back in memory."""
