"""SUMO backends."""
