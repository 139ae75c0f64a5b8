"""Environment speed: policy steps/s with random actions, cavlab next to highway-env, at the
default traffic and at >= 150 vehicles.

    pip install -e ".[bench]"
    python benchmarks/bench_envs.py [--runs 5] [--steps 400]
    python benchmarks/bench_envs.py --against DIR [--runs 5] [--steps 400]

Each measurement runs in a fresh process: `--steps` policy steps with random actions from
`reset(seed=run)`, resetting whenever an episode ends (resets are part of the cost, as in
training). The envs alternate within each run, so machine-load drift hits all of them alike.
Also reported: the vehicles in the simulation (mean over the steps), so that the traffic
can be compared; the median reset; and for cavlab the first reset (SUMO's start and one
warm-up) and the building of the other warm states (`AgentTraffic.build_warm_states`, once
per env: a training run pays it once), both done before the steps are timed. The ratios are
to highway-fast-v0 at its default 20 vehicles and with vehicles_count = 50, median of the
runs' ratios (each run measures all envs). Then AsyncVectorEnv scaling of
cavlab/LaneChange-v0 (one process per env). Prints Markdown tables for docs/benchmarks.md.

`--against DIR` instead compares cavlab's environments with another cavlab checkout (an older
commit, say), laid out as a wheel would install it in DIR (`DIR/cavlab/...`, e.g. with
`tests/test_layers.py`'s `lay_out`): in every run each environment is measured with this
checkout and with DIR's (on PYTHONPATH, which precedes the editable install), alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DENSE = {"set": ["demand.scale=1.5"], "warmup_s": 150.0}
"""cavlab/Highway-v0 at >= 150 vehicles: its 3-lane, 3 km road at 1.5× the demand (5400 veh/h),
warmed up for 150 s (about 165 vehicles when the ego enters, about 190 later)."""
ENVS = {  # label: (id, keyword arguments, steps as a share of --steps)
    "cavlab/LaneChange-v0": ("cavlab/LaneChange-v0", {}, 1.0),
    "cavlab/Merge-v0": ("cavlab/Merge-v0", {}, 1.0),
    "cavlab/Highway-v0": ("cavlab/Highway-v0", {}, 1.0),
    "cavlab/LaneChange-v0, planner actions": ("cavlab/LaneChange-v0", {"action": {"type": "planner"}}, 1.0),
    "cavlab/Highway-v0, demand ×1.5, warmup_s 150": ("cavlab/Highway-v0", DENSE, 1.0),
    "highway-fast-v0": ("highway-fast-v0", {}, 1.0),
    "highway-fast-v0, vehicles_count 50": ("highway-fast-v0", {"config": {"vehicles_count": 50}}, 0.25),
    "highway-fast-v0, vehicles_count 150": ("highway-fast-v0", {"config": {"vehicles_count": 150}}, 0.1),
    "merge-v0": ("merge-v0", {}, 1.0),
    "highway-v0": ("highway-v0", {}, 0.1),  # ~4 steps/s
}
BASELINE = "highway-fast-v0"
BASELINE_50 = "highway-fast-v0, vehicles_count 50"


def vehicles_of(env) -> int:
    """Vehicles in the simulation now (cavlab: SUMO's network; highway-env: its road)."""
    base = env.unwrapped
    if hasattr(base, "traffic"):
        return len(base.traffic.world)
    return len(base.road.vehicles)


def one_run(label: str, steps: int, seed: int) -> dict:
    import gymnasium as gym

    env_id, kwargs, _ = ENVS[label]
    is_cavlab = env_id.startswith("cavlab/")
    if is_cavlab:
        import cavlab.envs  # noqa: F401 - registers the envs
    else:
        import highway_env  # noqa: F401 - registers the envs

    env = gym.make(env_id, **kwargs)
    env.action_space.seed(seed)
    started = time.perf_counter()
    env.reset(seed=seed)
    first_reset = time.perf_counter() - started
    pool = 0.0
    if hasattr(env.unwrapped, "traffic") and hasattr(env.unwrapped.traffic, "build_warm_states"):  # not --against's
        started = time.perf_counter()
        env.unwrapped.traffic.build_warm_states()
        pool = time.perf_counter() - started
        env.reset(seed=seed)
    vehicles = 0
    resets: list[float] = []
    started = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        vehicles += vehicles_of(env)
        if terminated or truncated:
            t = time.perf_counter()
            env.reset()
            resets.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    env.close()
    return {"env": label, "steps_per_s": steps / wall, "vehicles": vehicles / steps, "first_reset_s": first_reset,
            "warm_states_s": pool, "reset_ms": 1000 * statistics.median(resets) if resets else float("nan"),
            "resets": len(resets)}  # fmt: skip


def vector_run(num_envs: int, steps: int, seed: int) -> dict:
    import gymnasium as gym
    import numpy as np

    envs = gym.make_vec("cavlab.envs:cavlab/LaneChange-v0", num_envs=num_envs, vectorization_mode="async")
    envs.action_space.seed(seed)
    envs.reset(seed=[seed + k for k in range(num_envs)])
    started = time.perf_counter()
    for _ in range(steps):
        envs.step(np.asarray(envs.action_space.sample()))
    wall = time.perf_counter() - started
    envs.close()
    return {"num_envs": num_envs, "env_steps_per_s": num_envs * steps / wall}


def child(args: list[str], pythonpath: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def against(other: str, runs: int, steps: int) -> None:
    """This checkout's environments side by side with those of the checkout laid out in `other`."""
    labels = [label for label in ENVS if label.startswith("cavlab/")]
    here: dict[str, list[dict]] = {label: [] for label in labels}
    there: dict[str, list[dict]] = {label: [] for label in labels}
    for run in range(runs):
        for label in labels:
            here[label].append(child(["--one", label, str(steps), str(run)]))
            there[label].append(child(["--one", label, str(steps), str(run)], pythonpath=other))
    print(f"command: python benchmarks/bench_envs.py --against {other} --runs {runs} --steps {steps}")
    print("\n| env | runs | steps/s, this checkout (median) | steps/s, the other (median) "
          "| this / other (median of paired runs) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for label in labels:
        a, b = here[label], there[label]
        ratio = statistics.median(x["steps_per_s"] / y["steps_per_s"] for x, y in zip(a, b, strict=True))
        print(f"| `{label}` | {runs} | {statistics.median(x['steps_per_s'] for x in a):.1f} | "
              f"{statistics.median(y['steps_per_s'] for y in b):.1f} | {ratio:.2f}× |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--vector-envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--vector", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--against", metavar="DIR", help="compare with the cavlab package laid out in DIR")
    args = parser.parse_args()
    if args.against:
        against(args.against, args.runs, args.steps)
        return
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    if args.vector:
        print(json.dumps(vector_run(*args.vector)))
        return
    results: dict[str, list[dict]] = {label: [] for label in ENVS}
    for run in range(args.runs):
        for label, (_, _, share) in ENVS.items():
            results[label].append(child(["--one", label, str(max(20, round(args.steps * share))), str(run)]))
    print(f"command: python benchmarks/bench_envs.py --runs {args.runs} --steps {args.steps}")
    print("\n| env | runs | steps/s (median) | vehicles simulated (mean) | reset, ms (median) | first reset, s "
          f"| other warm states, s | ratio to `{BASELINE}` | ratio to `{BASELINE_50}` |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rows in results.items():
        med = statistics.median(r["steps_per_s"] for r in rows)
        ratios = [
            statistics.median(r["steps_per_s"] / b["steps_per_s"] for r, b in zip(rows, results[base], strict=True))
            for base in (BASELINE, BASELINE_50)
        ]
        veh = statistics.mean(r["vehicles"] for r in rows)
        reset = statistics.median(r["reset_ms"] for r in rows)
        first = statistics.median(r["first_reset_s"] for r in rows)
        pool = f"{statistics.median(r['warm_states_s'] for r in rows):.2f}" if label.startswith("cavlab/") else "–"
        print(f"| `{label}` | {len(rows)} | {med:.1f} | {veh:.0f} | {reset:.1f} | {first:.3f} | {pool} "
              f"| {ratios[0]:.2f}× | {ratios[1]:.2f}× |")  # fmt: skip
    print("\n| AsyncVectorEnv, cavlab/LaneChange-v0 | env steps/s (median) | ratio to 1 env |")
    print("|---|---|---|")
    vec: dict[int, list[float]] = {n: [] for n in args.vector_envs}
    for run in range(args.runs):
        for n in args.vector_envs:
            vec[n].append(child(["--vector", str(n), str(args.steps), str(run)])["env_steps_per_s"])
    one = statistics.median(vec[args.vector_envs[0]])
    for n, values in vec.items():
        print(f"| {n} process{'es' if n > 1 else ''} | {statistics.median(values):.1f} | "
              f"{statistics.median(values) / one:.2f}× |")  # fmt: skip


if __name__ == "__main__":
    main()
