"""Experiments, many runs of the engine: sweeps over scenario fields and seeds with their measure
registry (`sweep`), the lane-change studies run as sweeps (`study`: the bottleneck study and the
straight-road study), and perception datasets from simulations (`datasets`). Importing the package
imports the studies, which register their sweep measures (`cavlab.experiments.sweep.register_measure`:
`lane_changes` and `lane_change_disruption`), so whichever module of the package a process imports
first, a sweep worker included, the registry is filled; `sweep` imports no study.
"""

# Registers the sweep measures `lane_changes` and `lane_change_disruption`.
from cavlab.experiments import study  # noqa: F401
