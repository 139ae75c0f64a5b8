"""Engine speed on an external network: a `cavlab run` on SUMO's A10KW example against bare libsumo.

    python benchmarks/bench_networks.py [--runs 3] [--window-s 60]

A10KW (`sumo:tools/game/A10KW.sumocfg`, the largest network of tests/test_networks.py: an
OpenStreetMap motorway junction with 433 edges, 1,285 internal ones among 1,794, and seven route
files), with two of cavlab's own flows of 1500 veh/h added from edge to edge, holds about 550
vehicles after a fill of `--fill-s` (300 s at 0.1 s steps). Both modes run the same .sumocfg
with the same seed, each in a fresh process (libsumo allows one simulation per process),
alternating bare / engine; only the last `--window-s` seconds of simulated time are timed:

- bare:   libsumo.simulationStep() only, no reads;
- engine: the whole engine loop of `cavlab run` with the `sumo` controller (every vehicle's lane,
          position, speed and acceleration into a WorldState, metrics with the per-edge
          measures and lane changes across junctions, trajectory recording, command application).

The last column divides the engine's time by the time of the SUMO steps inside it (timed
apart in the same run): on a machine shared with other work, where bare runs minutes apart
see different loads, it is the steadier measure of what cavlab adds to SUMO's own step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOWS = [  # two motorway streams of the A10KW network, entry edge to exit edge
    {"from_edge": "264306385", "to_edge": "264308376", "vehicles_per_hour": 1500},
    {"from_edge": "290296351", "to_edge": "264308373", "vehicles_per_hour": 1500},
]


def scenario(fill_s: float, window_s: float):
    import yaml

    from cavlab.sim.resolve import load_scenario

    spec = {
        "name": "bench-a10kw",
        "road": {"kind": "network", "network": {"file": "sumo:tools/game/A10KW.sumocfg"}},
        "demand": {"flows": FLOWS},
        "simulation": {"duration_s": fill_s + window_s, "warmup_s": fill_s},
    }
    folder = Path(tempfile.mkdtemp(prefix="bench-networks-"))
    (folder / "a10kw.yaml").write_text(yaml.safe_dump(spec))
    return load_scenario(folder / "a10kw.yaml")


def one_run(mode: str, fill_s: float, window_s: float) -> dict:
    """Time the last `window_s` of one run; executed in a child process."""
    from cavlab.sim.engine import Engine

    s = scenario(fill_s, window_s)
    sim = s.simulation
    first_timed = round(sim.warmup_s / sim.step_length_s) + 1
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(s, Path(tmp) / "sumo")
        counts: list[int] = []
        if mode == "bare":
            import libsumo

            libsumo.start(["sumo", "-c", str(engine.inputs.config)])
            libsumo.simulationStep(sim.warmup_s)
            started = time.perf_counter()
            for _ in range(sim.steps - first_timed + 1):
                libsumo.simulationStep()
                counts.append(libsumo.vehicle.getIDCount())
            wall = time.perf_counter() - started
            libsumo.close()
        else:
            engine.start()
            for _ in range(first_timed - 1):
                engine.step()
            backend, sumo_s = engine.backend, [0.0]
            inner = backend._step_sumo

            def sumo_step():  # SUMO's own step within the engine's, timed apart
                started = time.perf_counter()
                out = inner()
                sumo_s[0] += time.perf_counter() - started
                return out

            backend._step_sumo = sumo_step
            started = time.perf_counter()
            for _ in range(sim.steps - first_timed + 1):
                counts.append(len(engine.step()[0]))
            wall = time.perf_counter() - started
            engine.result()
            return {"mode": mode, "steps": len(counts), "vehicle_steps": sum(counts), "wall_s": wall,
                    "sumo_step_s": sumo_s[0]}  # fmt: skip
    return {"mode": mode, "steps": len(counts), "vehicle_steps": sum(counts), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fill-s", type=float, default=300.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--one", metavar="MODE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.fill_s, args.window_s)))
        return
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    samples: dict[str, list[dict]] = {"bare": [], "engine": []}
    for run in range(args.runs):
        for mode in samples:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                mode,
                "--fill-s",
                str(args.fill_s),
                "--window-s",
                str(args.window_s),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            samples[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  run {run + 1}/{args.runs} {mode}: {samples[mode][-1]}", file=sys.stderr)
    ratio = statistics.median(
        (e["wall_s"] / e["steps"]) / (b["wall_s"] / b["steps"])
        for e, b in zip(samples["engine"], samples["bare"], strict=True)
    )
    vehicles = statistics.mean(s["vehicle_steps"] / s["steps"] for s in samples["engine"])
    own = statistics.median(s["wall_s"] / s["sumo_step_s"] for s in samples["engine"])

    def rate(mode: str, what: str) -> float:
        return statistics.median(s[what] / s["wall_s"] for s in samples[mode])

    print("\n| network | mean vehicles | runs | bare steps/s | bare veh-steps/s | cavlab steps/s | cavlab veh-steps/s "
          "| cavlab time / bare time (median of paired runs) | cavlab time / its SUMO steps' time (median) "
          "|")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    bare, engine = (f"{rate(m, 'steps'):.0f} | {rate(m, 'vehicle_steps'):,.0f}" for m in ("bare", "engine"))
    print(f"| A10KW | {vehicles:.0f} | {args.runs} | {bare} | {engine} | {ratio:.2f}× | {own:.2f}× |")


if __name__ == "__main__":
    main()
