"""Trajectory recording: every vehicle's state, sampled every `trajectory_period_s`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cavlab.world import WorldState


class TrajectoryRecorder:
    """Keeps references to the world-state arrays of sampled steps; builds one table at the end."""

    def __init__(self, every_steps: int) -> None:
        self.every_steps = max(1, every_steps)
        self._step = 0
        self._chunks: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._edge_names: tuple[str, ...] = ()

    def observe(self, world: WorldState) -> None:
        self._step += 1
        if self._step % self.every_steps == 0:
            self._edge_names = world.edge_names
            self._chunks.append(
                (world.time_s, world.slot, world.lane, world.x_m, world.speed_mps, world.accel_mps2, world.edge)
            )

    def table(self, vehicle_ids: list[str], vehicle_types: list[str]) -> pa.Table:
        """Columns t_s, vehicle_id, vehicle_type, lane, x_m, speed_mps, accel_mps2, edge (the SUMO edge id)."""
        sizes = [len(c[1]) for c in self._chunks]
        t = np.repeat([c[0] for c in self._chunks], sizes) if sizes else np.zeros(0)
        slot = np.concatenate([c[1] for c in self._chunks]) if sizes else np.zeros(0, dtype=np.int64)

        def col(i: int, dtype: type) -> np.ndarray:
            return np.concatenate([c[i] for c in self._chunks]).astype(dtype) if sizes else np.zeros(0, dtype)

        type_names = sorted(set(vehicle_types))
        type_of_slot = np.array([type_names.index(t) for t in vehicle_types], dtype=np.int32)
        return pa.table(
            {
                "t_s": pa.array(t, pa.float64()),
                "vehicle_id": pa.DictionaryArray.from_arrays(
                    pa.array(slot.astype(np.int32)), pa.array(vehicle_ids, pa.string())
                ).dictionary_decode(),
                "vehicle_type": pa.DictionaryArray.from_arrays(
                    pa.array(type_of_slot[slot] if len(slot) else np.zeros(0, np.int32)),
                    pa.array(type_names, pa.string()),
                ).dictionary_decode(),
                "lane": pa.array(col(2, np.int16)),
                "x_m": pa.array(col(3, np.float64)),
                "speed_mps": pa.array(col(4, np.float64)),
                "accel_mps2": pa.array(col(5, np.float64)),
                "edge": pa.DictionaryArray.from_arrays(
                    pa.array(col(6, np.int32)), pa.array(self._edge_names, pa.string())
                ).dictionary_decode(),
            }
        )
