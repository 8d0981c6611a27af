"""Slicer glue: MRML nodes <-> arrays (mrml, volume_nodes, segmentation_nodes, results), one worker run (task) and
the runs the module offers (runs), the worker's dependencies and environment, what the panel shows (panel), and
what the module's Reload reloads (reloading). qt/slicer/vtk are imported inside functions only."""
