"""experiments: sweeps (cavlab.experiments.sweep) and the studies run as sweeps.

Importing the package imports the studies, which register their sweep measures
(`cavlab.experiments.sweep.register_measure`): whichever module of the package a process
imports first, a sweep worker included, the registry is filled. sweep imports no study.
"""

from cavlab.experiments import study  # noqa: F401  (registers the `lane_changes` measure)
