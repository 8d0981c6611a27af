"""Geometry in world coordinates: voxel grids, resampling, and the profile grid the models work on."""
