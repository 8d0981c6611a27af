"""Training the two latent diffusion models (autoencoders, LDMs), their bundles and volume calibration."""
