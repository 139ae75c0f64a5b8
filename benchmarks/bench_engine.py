"""Engine speed: vehicle-steps/s of a full `cavlab run` against bare libsumo stepping.

    python benchmarks/bench_engine.py [--runs 5] [--sizes 100 500 2000] [--reads]

For each size, `highway-lane-change` is stretched (road.length_m) so that about that many
vehicles are in the network once it has filled. Both modes run the same .sumocfg with the
same seed, each in a fresh process (libsumo allows one simulation per process), alternating
bare / engine. Only the last `--window-s` seconds of simulated time are timed, after the
road has filled:

- bare:   libsumo.simulationStep() only, no reads;
- reads:  bare plus what the libsumo backend reads of every vehicle each step (its C++ reader:
          lane lists, lane position, speed, slot), nothing else: the floor of any loop that
          reads every vehicle every step;
- engine: the whole engine loop (every vehicle's lane, position, speed and acceleration into
          a WorldState, metrics, trajectory recording, the controller, command application).

`--parts SIZE` times each piece of `Engine.step` (median µs per step over the timed window:
SUMO's step with its events, the reads, the world-state assembly, metrics, recorder,
perception hook, controller, commands) at one size; `--set KEY=VALUE` changes its scenario.

`--interleave STEPS` measures the ratio inside each run's process instead: bare and engine blocks of
STEPS steps alternate over the timed window (`interleaved_run`), so both meet the same traffic and
machine state; the median of the block ratios is the run's figure. With `--pieces` the blocks add the
pieces of `Engine.step` one at a time (`interleaved_pieces`).

`--reads` adds a micro-benchmark of ways to read the world state at the 500-vehicle size:
libsumo lane lists + 2 getters (what the libsumo backend does), libsumo getIDList + 4
getters, libsumo subscriptions; TraCI subscriptions (what the TraCI backend does) and TraCI
getters. It prints Markdown tables to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
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

import numpy as np

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
            from cavlab.sim.backends import _libsumo_reads

            _libsumo_reads.bind(c.__file__)
            _libsumo_reads.set_lanes(engine.network.lane_ids)
            slot_of = {vid: k for k, vid in enumerate(libsumo.vehicle.getIDList())}
            buffers = (np.zeros(8192, np.intp), np.zeros(8192, np.intp), np.zeros(8192), np.zeros(8192))
            counts = []
            started = time.perf_counter()
            for _ in range(sim.steps - first_timed + 1):
                libsumo.simulationStep()
                if mode == "reads":
                    for vid in c.simulation_getDepartedIDList():
                        slot_of[vid] = len(slot_of)
                    _libsumo_reads.read(slot_of, *buffers)
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


@contextlib.contextmanager
def filled_engine(scenario):
    """An engine on `scenario` stepped through its warm-up (the fill); yields it and the number of fill steps."""
    from cavlab.sim.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(scenario, Path(tmp) / "sumo")
        engine.start()
        fill = round(scenario.simulation.warmup_s / scenario.simulation.step_length_s)
        for _ in range(fill):
            engine.step()
        yield engine, fill


def interleaved_run(vehicles: int, window_s: float, block: int, overrides: tuple[str, ...] = ()) -> dict:
    """Bare and engine stepping alternated in one process, `block` steps each, over the timed window:
    bare blocks step SUMO through the backend without reading the world (SUMO's step, its stderr
    redirection and its departures/arrivals: a few calls more than `simulationStep` alone), engine
    blocks run `Engine.step`. Both see the same traffic and the same machine state within seconds,
    which fresh-process pairs do not (identical bare runs differ by up to 2.5×, docs/benchmarks.md).
    `overrides` change the scenario (KEY=VALUE as `cavlab run --set` takes them)."""

    scenario = scenario_for(vehicles, window_s, overrides=overrides)
    sim = scenario.simulation
    per_step: dict[str, list[float]] = {"bare": [], "engine": []}
    counts: list[int] = []
    with filled_engine(scenario) as (engine, fill):
        backend = engine.backend
        for _ in range((sim.steps - fill) // (2 * block)):
            started = time.perf_counter()
            for _ in range(block):
                backend.step(read_world=False)
            per_step["bare"].append((time.perf_counter() - started) / block)
            engine.read()  # the world after the bare block, untimed
            started = time.perf_counter()
            for _ in range(block):
                counts.append(len(engine.step()[0]))
            per_step["engine"].append((time.perf_counter() - started) / block)
        engine.close()
    ratios = [e / b for e, b in zip(per_step["engine"], per_step["bare"], strict=True)]
    return {
        "size": vehicles, "vehicles": statistics.mean(counts), "blocks": len(ratios),
        "bare_step_s": statistics.median(per_step["bare"]), "engine_step_s": statistics.median(per_step["engine"]),
        "ratio": statistics.median(ratios),
    }  # fmt: skip


def interleaved_pieces(vehicles: int, window_s: float, block: int) -> dict[str, float]:
    """Like `interleaved_run`, with blocks that add the pieces of `Engine.step` one at a time, each as the
    median ratio of its time per step to the bare block's of the same round: the cost of a piece includes
    what it slows the others down (caches and heap shared with SUMO), which timing it alone misses."""

    scenario = scenario_for(vehicles, window_s)
    sim = scenario.simulation
    with filled_engine(scenario) as (engine, fill):
        backend, metrics, recorder = engine.backend, engine.metrics, engine.recorder

        def without(**parts):
            def step():
                for name in parts:
                    setattr(engine, name, None)
                engine.step()
                for name, part in parts.items():
                    setattr(engine, name, part)

            return step

        modes = {
            "bare": lambda: backend.step(read_world=False),
            "+ reads": lambda: (backend.step(read_world=False), backend._read_vehicles()),
            "+ world-state assembly": backend.step,
            "+ planning, commands (Engine.step without metrics and recorder)": without(metrics=metrics),
            "+ metrics (Engine.step without the recorder)": without(recorder=recorder),
            "+ recorder (Engine.step)": engine.step,
        }
        per_step: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range((sim.steps - fill) // (len(modes) * block)):
            for mode, step in modes.items():
                started = time.perf_counter()
                for _ in range(block):
                    step()
                per_step[mode].append((time.perf_counter() - started) / block)
                engine.read()  # the world after the block, untimed
        engine.close()
    bare = per_step["bare"]
    return {mode: statistics.median(t / b for t, b in zip(ts, bare, strict=True)) for mode, ts in per_step.items()}


def step_parts(vehicles: int, window_s: float, overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Median µs per step of each piece of `Engine.step`, timed by wrapping the methods (the scenario
    changed by `overrides`, KEY=VALUE as `cavlab run --set` takes them)."""

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

    with filled_engine(scenario) as (engine, fill):
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
            """SWIG's C functions, lane lists + 2 getters (the libsumo backend before its C++ reader)."""
            c = api._libsumo
            ids = [vid for lane in lanes for vid in c.lane_getLastStepVehicleIDs(lane)]
            return list(map(c.vehicle_getLanePosition, ids)), list(map(c.vehicle_getSpeed, ids))

        slot_of: dict[str, int] = {}
        native = [np.zeros(4096, np.intp), np.zeros(4096, np.intp), np.zeros(4096), np.zeros(4096)]

        def native_read(api):
            """What the libsumo backend does: one call of cavlab's C++ reader (slots, lane rows, positions,
            speeds into arrays), the departures registered first as the backend does."""
            for vid in api.simulation.getDepartedIDList():
                slot_of[vid] = len(slot_of)
            return _libsumo_reads.read(slot_of, *native)

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
            if reader is native_read:  # the vehicles in the network now, as the backend has them registered
                slot_of.clear()
                slot_of.update((vid, k) for k, vid in enumerate(api.vehicle.getIDList()))
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
            ("cavlab C++ reader: lane lists + 2 getters", native_read),
            ("libsumo lane lists + 2 getters", lane_lists),
            ("libsumo lane lists + 2 getters, Python wrappers", lane_lists_wrapped),
            ("libsumo getIDList + 4 getters", id_list_getters),
            ("libsumo subscriptions", subscriptions),
        ):
            libsumo.start(["sumo", "-c", cfg])
            libsumo.simulationStep(warm)
            if reader is native_read:
                from cavlab.sim.backends import _libsumo_reads

                _libsumo_reads.bind(libsumo._libsumo.__file__)
                _libsumo_reads.set_lanes(lanes)
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
        help="with --parts or --interleave: change the scenario (e.g. outputs.trajectories=false)",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        metavar="STEPS",
        help="alternate bare and engine blocks of STEPS steps in each run's process instead of separate runs",
    )
    parser.add_argument(
        "--pieces",
        action="store_true",
        help="with --interleave: add the pieces of Engine.step one block at a time (one run per size)",
    )
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pieces and not args.interleave:
        parser.error("--pieces needs --interleave STEPS")
    if args.set and not (args.parts or args.interleave):
        parser.error("--set changes the scenario of --parts and --interleave only: give one of them with it")
    if args.one:
        mode, size = args.one[0], int(args.one[1])
        if mode == "interleaved":
            print(json.dumps(interleaved_run(size, args.window_s, args.interleave, tuple(args.set))))
        else:
            print(json.dumps(one_run(mode, size, args.window_s)))
        return
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.parts:
        res = step_parts(args.parts, args.window_s, tuple(args.set))
        print(f"\n| piece of Engine.step (≈{res.pop('vehicles'):.0f} vehicles) | µs per step (median) |\n|---|---|")
        print("\n".join(f"| {k} | {v:,.1f} |" for k, v in res.items()))
        print(f"| peak resident memory (MB) | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} |")
        return
    sizes = " ".join(map(str, args.sizes))
    if args.pieces:
        print(f"command: python benchmarks/bench_engine.py --interleave {args.interleave} --pieces --sizes {sizes} "
              f"--window-s {args.window_s:g}")  # fmt: skip
        results = {size: interleaved_pieces(size, args.window_s, args.interleave) for size in args.sizes}
        print(
            "\n| time per step / bare time per step (medians over the rounds) | "
            + " | ".join(f"{size} vehicles" for size in args.sizes)
            + " |"
        )
        print("|---|" + "---|" * len(args.sizes))
        for mode in next(iter(results.values())):
            print(f"| {mode} | " + " | ".join(f"{results[size][mode]:.3f}" for size in args.sizes) + " |")
        return
    if args.interleave:
        sets = "".join(f" --set {kv}" for kv in args.set)
        print(f"command: python benchmarks/bench_engine.py --interleave {args.interleave} --runs {args.runs} "
              f"--sizes {sizes}{sets}")  # fmt: skip
        print("\n| target size | mean vehicles | runs × blocks | bare µs/step | cavlab µs/step | cavlab time / bare "
              "time (median of the runs' median block ratios) | per run |\n|---|---|---|---|---|---|---|")  # fmt: skip
        for size in args.sizes:
            runs = []
            for run in range(args.runs):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", "interleaved", str(size), "--window-s", str(args.window_s),
                     "--interleave", str(args.interleave), *(f"--set={kv}" for kv in args.set)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  size {size} run {run + 1}/{args.runs}: {runs[-1]}", file=sys.stderr)
            print(
                f"| {size} | {statistics.mean(r['vehicles'] for r in runs):.0f} | {len(runs)} × {runs[0]['blocks']} | "
                f"{statistics.median(r['bare_step_s'] for r in runs) * 1e6:,.0f} | "
                f"{statistics.median(r['engine_step_s'] for r in runs) * 1e6:,.0f} | "
                f"{statistics.median(r['ratio'] for r in runs):.2f}× | "
                f"{', '.join(format(r['ratio'], '.2f') for r in runs)} |"
            )
        return
    print(f"command: python benchmarks/bench_engine.py --runs {args.runs} --sizes {sizes}")
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
