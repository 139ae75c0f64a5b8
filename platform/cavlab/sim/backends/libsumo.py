"""libsumo: SUMO inside this process.

Reads the world state in one native call per step (`_libsumo_reads`, built with cavlab): one
vehicle list per lane (which also gives every vehicle's lane) and two getters per vehicle (lane
position, speed) of libsumo's C++ API, written straight into arrays with each vehicle's slot.
Through SWIG's getters the same reads cost more, with the ids and slots still to be built in
Python, and subscriptions more again (building their result dicts; see docs/benchmarks.md).

libsumo runs one simulation per process, and a second `start` silently replaces the
first; this backend refuses to start while another libsumo simulation is open
(`libsumo_in_use` tells whether one is).

SUMO writes its warnings both to the run's log and to the process's stderr; stderr is
pointed at sumo/sumo.console.log while SUMO runs, so the terminal stays clean.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cavlab.errors import SimulationError
from cavlab.sim.backends.base import RawEvents, RawVehicles, SumoBackend

_owner: LibsumoBackend | None = None


def libsumo_in_use() -> bool:
    """Whether a libsumo simulation is open in this process (another cannot start until it closes)."""
    return _owner is not None


class LibsumoBackend(SumoBackend):
    name = "libsumo"

    @property
    def api(self) -> Any:
        import libsumo

        return libsumo

    def _launch(self, args: list[str]) -> None:
        global _owner
        if _owner is not None:
            raise SimulationError(
                f"a libsumo simulation is already running in this process (scenario "
                f"'{_owner.scenario.name}'); libsumo allows one per process: close it first, use "
                f"backend 'traci', or run each simulation in its own process"
            )
        import libsumo
        from sumolib import checkBinary

        _owner = self
        log = self.inputs.folder / "sumo.console.log"
        self._console = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._stderr = os.dup(2)
        try:
            os.dup2(self._console, 2)
            try:
                libsumo.start([checkBinary("sumo"), *args])
            finally:
                os.dup2(self._stderr, 2)
        except BaseException:
            self._release_fds()
            _owner = None
            raise
        from libsumo import _libsumo as c_api

        from cavlab.sim.backends import _libsumo_reads

        _libsumo_reads.bind(c_api.__file__)  # the C++ reader calls into this process's libsumo
        _libsumo_reads.set_lanes(self.network.lane_ids)
        self._native_read = _libsumo_reads.read
        self._read_lane_row = np.zeros(1024, dtype=np.intp)
        self._read_slot = np.zeros(1024, dtype=np.intp)
        self._read_pos = np.zeros(1024)
        self._read_speed = np.zeros(1024)
        self._get_accel = c_api.vehicle_getAcceleration
        self._get_time = c_api.simulation_getTime
        self._get_departed = c_api.simulation_getDepartedIDList
        self._get_arrived = c_api.simulation_getArrivedIDList
        self._get_colliding = c_api.simulation_getCollidingVehiclesNumber
        self._step = c_api.simulation_step

    def _shutdown(self) -> None:
        global _owner
        import libsumo

        try:
            os.dup2(self._console, 2)
            try:
                libsumo.close()
            finally:
                os.dup2(self._stderr, 2)
        finally:
            self._release_fds()
            _owner = None

    def _reload(self, args: list[str]) -> None:
        import libsumo

        os.dup2(self._console, 2)
        try:
            libsumo.load(args)
        finally:
            os.dup2(self._stderr, 2)

    def _release_fds(self) -> None:
        os.close(self._console)
        os.close(self._stderr)

    def _step_sumo(self) -> RawEvents:
        import libsumo

        os.dup2(self._console, 2)
        try:
            self._step(0.0)
        finally:
            os.dup2(self._stderr, 2)
        return RawEvents(
            time_s=self._get_time(),
            departed=self._get_departed(),
            arrived=self._get_arrived(),
            collisions=libsumo.simulation.getCollisions() if self._get_colliding() else (),
        )

    def _read_vehicles(self) -> RawVehicles:
        while (n := self._native_read(
            self._slot_of, self._read_lane_row, self._read_slot, self._read_pos, self._read_speed
        )) < 0:  # fmt: skip
            size = 2 * len(self._read_slot)
            self._read_lane_row, self._read_slot = np.zeros(size, np.intp), np.zeros(size, np.intp)
            self._read_pos, self._read_speed = np.zeros(size), np.zeros(size)
        return RawVehicles(
            slot=self._read_slot[:n].copy(),
            lane_row=self._read_lane_row[:n].copy(),
            lane_pos_m=self._read_pos[:n],  # consumed by the assembly before the next read
            speed_mps=self._read_speed[:n].copy(),
        )

    def _accelerations(self, ids: list[str]) -> np.ndarray:
        return np.fromiter(map(self._get_accel, ids), dtype=np.float64, count=len(ids))
