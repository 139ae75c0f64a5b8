"""The scenario library shipped with cavlab (YAML files, read with `cavlab.config.scenario`)."""
