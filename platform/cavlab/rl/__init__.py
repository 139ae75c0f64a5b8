"""Reinforcement learning on the environments: Stable-Baselines3 (`sb3`), RLlib (`rllib`), baseline
drivers (`baselines`) and the evaluation that compares them (`evaluation`)."""
