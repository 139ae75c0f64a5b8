"""TraCI: SUMO (or sumo-gui) in a child process, over a socket.

Reads with subscriptions — every lane's vehicle list, the simulation's departures,
arrivals and collision count, and each vehicle's lane position and speed — so one step is
one round trip; per-vehicle getters over the socket are about 23× slower.

The child is started directly (not through the pip wheel's `sumo` shim) in this process's
working directory, like libsumo, so a relative run folder means the same to both; it dies with
this process on Linux, and is killed if it does not exit after `close()`. If it quits before
connecting, its own error (from sumo.console.log) is the message.

SUMO has no option for the TraCI server's address: `--remote-port` listens on all interfaces
(0.0.0.0). With `--num-clients 1` it stops listening once a client is connected, and this backend
connects as soon as the port opens (tries every 10 ms), so the port is open for milliseconds
after SUMO has loaded its inputs; see docs/security.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cavlab.errors import SimulationError
from cavlab.sim.backends.base import RawEvents, RawVehicles, SumoBackend


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to kill the child when its parent dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _sumo_errors(console_log: Path, most: int = 3) -> str:
    """SUMO's error lines in its console output, as one line ('' if it wrote none)."""
    try:
        lines = console_log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.removeprefix("Error:").strip() for line in lines if line.startswith("Error")]
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(errors[:most]).replace(":; ", ": ") + more  # "On processing option 'x':" goes on


class TraciBackend(SumoBackend):
    name = "traci"

    def __init__(self, *args: Any, gui: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gui = gui
        self._conn: Any = None
        self._proc: subprocess.Popen | None = None

    @property
    def api(self) -> Any:
        return self._conn

    @property
    def process(self) -> subprocess.Popen | None:
        """The SUMO child process."""
        return self._proc

    def _launch(self, args: list[str]) -> None:
        import traci
        import traci.constants as tc
        from sumolib import checkBinary
        from sumolib.miscutils import getFreeSocketPort

        binary = checkBinary("sumo-gui" if self.gui else "sumo")
        extra = ["--start", "--quit-on-end"] if self.gui else []
        port = getFreeSocketPort()
        cmd = [binary, *args, *extra, "--remote-port", str(port), "--num-clients", "1"]
        console_log = self.inputs.folder / "sumo.console.log"
        console = open(console_log, "wb")  # noqa: SIM115 - closed below
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            console.close()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # traci prints every refused attempt
                self._conn = traci.connect(
                    port, host="127.0.0.1", numRetries=1000, proc=self._proc, waitBetweenRetries=0.01,
                    label=f"cavlab-{id(self)}",
                )  # fmt: skip
        except Exception as exc:
            self._kill()
            errors = _sumo_errors(console_log)
            if errors:
                raise SimulationError(f"SUMO did not start: {errors}") from exc
            raise
        except BaseException:
            self._kill()
            raise
        self._vars = [tc.VAR_LANEPOSITION, tc.VAR_SPEED]
        self._lanes = self.network.lane_ids
        self._sim_vars = (
            tc.VAR_TIME,
            tc.VAR_DEPARTED_VEHICLES_IDS,
            tc.VAR_ARRIVED_VEHICLES_IDS,
            tc.VAR_COLLIDING_VEHICLES_NUMBER,
        )
        self._lane_list = tc.LAST_STEP_VEHICLE_ID_LIST
        self._pos, self._speed = self._vars
        self._subscribe()

    def _subscribe(self) -> None:
        """Subscribe to every lane's vehicle list and the simulation's events (again after a `load`)."""
        for lane in self._lanes:
            self._conn.lane.subscribe(lane, [self._lane_list])
        self._conn.simulation.subscribe(list(self._sim_vars))

    def _reload(self, args: list[str]) -> None:
        self._conn.load(args)
        self._subscribe()

    def remove_vehicle(self, vehicle_id: str) -> None:
        if vehicle_id in self._slot_of:  # else SUMO complains at every step that it is gone
            self._conn.vehicle.unsubscribe(vehicle_id)
        super().remove_vehicle(vehicle_id)

    def _take_present(self) -> None:
        super()._take_present()
        for d in self.present:
            self._conn.vehicle.subscribe(d.vehicle_id, self._vars)

    def _shutdown(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close(wait=False)
        except Exception:
            pass
        finally:
            self._conn = None
            self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _step_sumo(self) -> RawEvents:
        conn = self._conn
        conn.simulationStep()
        sim = conn.simulation.getSubscriptionResults()
        time_var, departed_var, arrived_var, colliding_var = self._sim_vars
        departed = tuple(sim[departed_var])
        for vid in departed:
            conn.vehicle.subscribe(vid, self._vars)
        return RawEvents(
            time_s=sim[time_var],
            departed=departed,
            arrived=tuple(sim[arrived_var]),
            collisions=conn.simulation.getCollisions() if sim[colliding_var] else (),
        )

    def _read_vehicles(self) -> RawVehicles:
        lanes = self._conn.lane.getAllSubscriptionResults()
        vehicles = self._conn.vehicle.getAllSubscriptionResults()
        ids: list[str] = []
        counts = []
        for lane in self._lanes:
            on_lane = lanes[lane][self._lane_list]
            ids.extend(on_lane)
            counts.append(len(on_lane))
        n = len(ids)
        rows = [vehicles[vid] for vid in ids]
        return RawVehicles(
            slot=np.fromiter(map(self._slot_of.__getitem__, ids), dtype=np.intp, count=n),
            lane_row=np.repeat(self._lane_rows, counts),
            lane_pos_m=np.fromiter((r[self._pos] for r in rows), dtype=np.float64, count=n),
            speed_mps=np.fromiter((r[self._speed] for r in rows), dtype=np.float64, count=n),
        )

    def _accelerations(self, ids: list[str]) -> np.ndarray:
        get = self._conn.vehicle.getAcceleration
        return np.fromiter(map(get, ids), dtype=np.float64, count=len(ids))
