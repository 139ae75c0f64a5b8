"""Engine speed: vehicle-steps/s of a full `cavlab run` against bare libsumo stepping.

    python benchmarks/bench_engine.py [--runs 5] [--sizes 100 500 2000] [--reads]

For each size, `highway-lane-change` is stretched (road.length_m) so that about that many
vehicles are in the network once it has filled. Both modes run the same .sumocfg with the
same seed, each in a fresh process (libsumo allows one simulation per process), alternating
bare / engine. Only the last `--window-s` seconds of simulated time are timed, after the
road has filled:

- bare:   libsumo.simulationStep() only, no reads;
- reads:  bare plus what the libsumo backend reads of every vehicle each step (lane lists, lane
          position, speed through SWIG's C functions), nothing else: the floor of any loop that
          reads every vehicle every step;
- engine: the whole engine loop (every vehicle's lane, position, speed and acceleration into
          a WorldState, metrics, trajectory recording, the controller, command application).

`--parts SIZE` times each piece of `Engine.step` (median µs per step over the timed window:
SUMO's step with its events, the reads, the world-state assembly, metrics, recorder,
perception hook, controller, commands) at one size; `--set KEY=VALUE` changes its scenario.

`--reads` adds a micro-benchmark of ways to read the world state at the 500-vehicle size:
libsumo lane lists + 2 getters (what the libsumo backend does), libsumo getIDList + 4
getters, libsumo subscriptions; TraCI subscriptions (what the TraCI backend does) and TraCI
getters. It prints Markdown tables to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEED_MPS = 26.0  # rough mean speed on highway-lane-change, used to size the fill time
DENSITY_PER_KM = 26.0  # vehicles per km of highway-lane-change once filled (measured: 655 on 25 km)


def scenario_for(vehicles: int, window_s: float, backend: str = "libsumo", overrides: tuple[str, ...] = ()):
    from cavlab.sim.resolve import load_scenario

    length_m = round(1000 * vehicles / DENSITY_PER_KM / 100) * 100
    fill_s = round(length_m / SPEED_MPS * 1.25 / 10) * 10
    return load_scenario(
        "highway-lane-change",
        [
            f"road.length_m={length_m}",
            f"road.detectors_m=[{length_m - 100}]",
            f"simulation.duration_s={fill_s + window_s}",
            f"simulation.warmup_s={fill_s}",
            f"simulation.backend={backend}",
            *overrides,
        ],
    )


def one_run(mode: str, vehicles: int, window_s: float) -> dict:
    """Time the last `window_s` of one run; executed in a child process."""
    from cavlab.sim.engine import Engine

    scenario = scenario_for(vehicles, window_s)
    sim = scenario.simulation
    first_timed = round(sim.warmup_s / sim.step_length_s) + 1
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(scenario, Path(tmp) / "sumo")
        if mode in ("bare", "reads"):
            import libsumo
            from libsumo import _libsumo as c

            libsumo.start(["sumo", "-c", str(engine.inputs.config)])
            libsumo.simulationStep(sim.warmup_s)
            lanes, counts = engine.network.lane_ids, []
            started = time.perf_counter()
            for _ in range(sim.steps - first_timed + 1):
                libsumo.simulationStep()
                if mode == "reads":
                    ids = [vid for lane in lanes for vid in c.lane_getLastStepVehicleIDs(lane)]
                    list(map(c.vehicle_getLanePosition, ids)), list(map(c.vehicle_getSpeed, ids))
                counts.append(libsumo.vehicle.getIDCount())
            wall = time.perf_counter() - started
            libsumo.close()
            steps, vehicle_steps = len(counts), sum(counts)
        else:
            marks: dict[str, float] = {}
            counts = []

            def progress(world, k: int) -> None:
                if k == first_timed - 1:
                    marks["start"] = time.perf_counter()
                elif k >= first_timed:
                    counts.append(len(world))
                    if k == sim.steps:
                        marks["end"] = time.perf_counter()

            engine.run(progress=progress, progress_every=1)
            wall = marks["end"] - marks["start"]
            steps, vehicle_steps = len(counts), sum(counts)
    return {"mode": mode, "size": vehicles, "steps": steps, "vehicle_steps": vehicle_steps, "wall_s": wall}


def step_parts(vehicles: int, window_s: float, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Median µs per step of each piece of `Engine.step`, timed by wrapping the methods (the scenario
    changed by `overrides`, KEY=VALUE as `cavlab run --set` takes them)."""
    from cavlab.sim.engine import Engine

    scenario = scenario_for(vehicles, window_s, overrides=overrides)
    sim = scenario.simulation
    times: dict[str, list[float]] = {}

    def timed(obj, name: str, label: str) -> None:
        inner = getattr(obj, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            times.setdefault(label, []).append(time.perf_counter() - started)
            return out

        setattr(obj, name, wrapper)

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(scenario, Path(tmp) / "sumo")
        engine.start()
        fill = round(sim.warmup_s / sim.step_length_s)
        for _ in range(fill):
            engine.step()
        backend = engine.backend
        for obj, name, label in [
            (backend, "_step_sumo", "SUMO step and its events"), (backend, "_read_vehicles", "reads"),
            (backend, "_assemble", "world-state assembly"), (backend, "apply", "commands"),
            (engine.metrics, "observe", "metrics"), (engine.recorder, "observe", "recorder"),
            (engine.perception, "observe", "perception hook"), (engine.controller, "step", "controller"),
            (engine, "step", "Engine.step in all"),
        ]:  # fmt: skip
            if obj is not None:  # no recorder without trajectories
                timed(obj, name, label)
        counts = [len(engine.step()[0]) for _ in range(sim.steps - fill)]
        engine.close()
    return {"vehicles": statistics.mean(counts), **{k: statistics.median(v) * 1e6 for k, v in times.items()}}


def read_strategies(window_steps: int = 1000) -> dict[str, float]:
    """Median microseconds per step of each way to read (lane, position, speed, acceleration)."""
    import libsumo
    import traci
    import traci.constants as tc
    from sumolib import checkBinary

    from cavlab.sim.engine import Engine

    scenario = scenario_for(500, 60)
    warm = scenario.simulation.warmup_s
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(scenario, Path(tmp) / "sumo")
        cfg = str(engine.inputs.config)
        lanes = engine.network.lane_ids

        def lane_lists(api):
            """What the libsumo backend does: SWIG's C functions, lane lists + 2 getters."""
            c = api._libsumo
            ids = [vid for lane in lanes for vid in c.lane_getLastStepVehicleIDs(lane)]
            return list(map(c.vehicle_getLanePosition, ids)), list(map(c.vehicle_getSpeed, ids))

        def lane_lists_wrapped(api):
            """The same through libsumo's Python wrapper functions."""
            v = api.vehicle
            ids = [vid for lane in lanes for vid in api.lane.getLastStepVehicleIDs(lane)]
            return list(map(v.getLanePosition, ids)), list(map(v.getSpeed, ids))

        def id_list_getters(api):
            v = api.vehicle
            ids = v.getIDList()
            return (
                [v.getLaneID(i) for i in ids],
                [v.getLanePosition(i) for i in ids],
                [v.getSpeed(i) for i in ids],
                [v.getAcceleration(i) for i in ids],
            )

        sub_vars = [tc.VAR_LANE_ID, tc.VAR_LANEPOSITION, tc.VAR_SPEED, tc.VAR_ACCELERATION]

        def subscriptions(api):
            for vid in api.simulation.getDepartedIDList():
                api.vehicle.subscribe(vid, sub_vars)
            return api.vehicle.getAllSubscriptionResults()

        def measure(api, step, reader, label: str, steps: int) -> None:
            if reader is subscriptions:
                for vid in api.vehicle.getIDList():
                    api.vehicle.subscribe(vid, sub_vars)
            times, n = [], []
            for _ in range(steps):
                step()
                t0 = time.perf_counter()
                reader(api)
                times.append(time.perf_counter() - t0)
                n.append(api.vehicle.getIDCount())
            results[label] = statistics.median(times) * 1e6
            results[label + " vehicles"] = statistics.mean(n)

        for label, reader in (
            ("libsumo lane lists + 2 getters", lane_lists),
            ("libsumo lane lists + 2 getters, Python wrappers", lane_lists_wrapped),
            ("libsumo getIDList + 4 getters", id_list_getters),
            ("libsumo subscriptions", subscriptions),
        ):
            libsumo.start(["sumo", "-c", cfg])
            libsumo.simulationStep(warm)
            t0 = time.perf_counter()
            for _ in range(window_steps):
                libsumo.simulationStep()
            results["libsumo step only"] = min(
                results.get("libsumo step only", 1e9), (time.perf_counter() - t0) / window_steps * 1e6
            )
            measure(libsumo, libsumo.simulationStep, reader, label, window_steps)
            libsumo.close()
        for label, reader, steps in (
            ("TraCI subscriptions", subscriptions, window_steps),
            ("TraCI getIDList + 4 getters", id_list_getters, 30),
        ):
            conn = traci.start([checkBinary("sumo"), "-c", cfg], label=f"bench-{label}")
            conn = traci.getConnection(f"bench-{label}")
            conn.simulationStep(warm)
            measure(conn, conn.simulationStep, reader, label, steps)
            conn.close()
    return results


def paired_ratio(samples: list[dict], bare: list[dict]) -> float:
    """Median over runs of (time per step) / (bare time per step of the same run)."""
    return statistics.median(
        (s["wall_s"] / s["steps"]) / (b["wall_s"] / b["steps"]) for s, b in zip(samples, bare, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500, 2000])
    parser.add_argument("--window-s", type=float, default=120.0)
    parser.add_argument("--reads", action="store_true")
    parser.add_argument("--parts", type=int, metavar="SIZE", help="time each piece of Engine.step at this size")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --parts: change the scenario (e.g. outputs.trajectories=false)",
    )
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.set and not args.parts:
        parser.error("--set changes the scenario of --parts only: give --parts SIZE with it")
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), args.window_s)))
        return
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.parts:
        res = step_parts(args.parts, args.window_s, tuple(args.set))
        print(f"\n| piece of Engine.step (≈{res.pop('vehicles'):.0f} vehicles) | µs per step (median) |\n|---|---|")
        print("\n".join(f"| {k} | {v:,.1f} |" for k, v in res.items()))
        print(f"| peak resident memory (MB) | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} |")
        return
    print(f"command: python benchmarks/bench_engine.py --runs {args.runs} --sizes {' '.join(map(str, args.sizes))}")
    rows = []
    for size in args.sizes:
        samples: dict[str, list[dict]] = {"bare": [], "reads": [], "engine": []}
        for run in range(args.runs):
            for mode in samples:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", mode, str(size), "--window-s", str(args.window_s)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                samples[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  size {size} run {run + 1}/{args.runs} {mode}: {samples[mode][-1]}", file=sys.stderr)
        bare = statistics.median(s["vehicle_steps"] / s["wall_s"] for s in samples["bare"])
        eng = statistics.median(s["vehicle_steps"] / s["wall_s"] for s in samples["engine"])
        ratios = [b["wall_s"] / b["steps"] for b in samples["bare"]]
        ratio = paired_ratio(samples["engine"], samples["bare"])
        vehicles = statistics.mean(s["vehicle_steps"] / s["steps"] for s in samples["engine"])
        rows.append(
            f"| {size} | {vehicles:.0f} | {args.runs} | {1 / statistics.median(ratios):.0f} | {bare:,.0f} | "
            f"{statistics.median(s['steps'] / s['wall_s'] for s in samples['engine']):.0f} | {eng:,.0f} | "
            f"{paired_ratio(samples['reads'], samples['bare']):.2f}× | {ratio:.2f}× |"
        )
    if rows:
        print()
        print("| target size | mean vehicles | runs | bare steps/s | bare veh-steps/s | cavlab steps/s "
              "| cavlab veh-steps/s | reads time / bare time | cavlab time / bare time "
              "(medians of paired runs) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    if args.reads:
        res = read_strategies()
        print()
        print(
            f"| read strategy (≈{res['libsumo lane lists + 2 getters vehicles']:.0f} vehicles) | µs per step (median) |"
        )
        print("|---|---|")
        for key, value in res.items():
            if not key.endswith("vehicles"):
                print(f"| {key} | {value:,.0f} |")


if __name__ == "__main__":
    main()
