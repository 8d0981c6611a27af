"""VentricleSynth engine: everything but the Slicer panel, one concept per folder, dependencies pointing down.

- foundation (single modules): errors, labels, volumes, affines, morphology, metrics, devices, progress,
  command_line
- `io/` (atomic writes, NIfTI, nnU-Net raw datasets, figures), `imaging/` (grids, resampling, the profile grid)
- `bundles/` (the model bundle format and where bundles are found)
- `generation/` (the two latent diffusion models, sampling settings, the sampler, pairs, sample folders) and
  `segmentation/` (the nnU-Net ventricle segmenter)
- `cohorts/` (synthetic cohorts with QC and a report)
- `worker/` (the out-of-process worker the Slicer module runs, and its line protocol)
- `slicer_glue/` (MRML nodes, worker tasks, dependencies; qt/slicer imported inside functions only)
- `cli` (`python -m VentricleSynthLib ...`)

Never imports qt or slicer at module level, and never imports `training`.
"""

__version__ = "0.1.0"
