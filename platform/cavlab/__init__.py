"""cavlab: hardware-aware simulation and control of connected automated vehicles on SUMO."""

__version__ = "0.1.0"
