"""Generation: the two latent diffusion models, their sampling settings and sampler, and sample folders."""
