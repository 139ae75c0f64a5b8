"""The scenario schema: pure pydantic models of a scenario file, reading and overrides
(`cavlab.config.scenario`). It imports nothing of cavlab but `errors`; what needs other layers is
resolved in `cavlab.sim.resolve`."""
