"""Experiments, many runs of the engine: sweeps over scenario fields and seeds with their measure
registry (`sweep`), the lane-change study run as a sweep (`study`), and perception datasets from
simulations (`datasets`). Importing the package imports the studies, which register their sweep
measures (`cavlab.experiments.sweep.register_measure`), so whichever module of the package a
process imports first, a sweep worker included, the registry is filled; `sweep` imports no study.
"""

from cavlab.experiments import study  # noqa: F401  (registers the `lane_changes` measure)
