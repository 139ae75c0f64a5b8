"""Published training results: PPO and DQN (Stable-Baselines3) on every environment, several
training seeds, against the baselines of `cavlab evaluate`, on the same seeded episodes.

    pip install -e ".[rl]"
    python benchmarks/bench_training.py [--timesteps 30000] [--seeds 0 1 2] [--episodes 30] [--out runs/bench-training]
    python benchmarks/bench_training.py --timesteps 256 --seeds 0 1 --episodes 2 --search-length 1 \
        --env warmup_s=3 --env episode_s=5 --out runs/bench-check  # a check of the machinery, in minutes

For each environment, algorithm and seed it runs `cavlab train ENV --algo A --seed S
--eval-every T/10` into OUT/ENV/A-seedS (PPO with --envs 2, DQN with one), then one
`cavlab evaluate ENV --baseline all` of every trained policy.zip next to every baseline, on
the episodes seeded 1000, 1001, … Per policy it reports the mean and the IQM (interquartile mean: the mean
of the middle 50 %) of the episode returns over runs × episodes, each with a 95 % bootstrap
interval (scipy.stats.bootstrap, percentile; for the trained policies stratified by run:
the episodes are resampled within each training seed), and whether the algorithm's IQM
interval lies above every baseline's. Learning curves: the mean return of the seeded greedy
evaluations during training (evaluation.csv), mean over the seeds with their range.

Writes OUT/results.json, OUT/results.md (the Markdown table for docs/training.md) and
OUT/learning_curves_<env>.png; each run keeps its own training and evaluation directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap, trim_mean

ENV_IDS = ("cavlab/LaneChange-v0", "cavlab/Merge-v0", "cavlab/Highway-v0")
ALGOS = ("ppo", "dqn")
TRAIN_ENVS = {"ppo": 2, "dqn": 1}  # DQN trains on one environment
EVAL_SEED = 1000
RESAMPLES = 2000


def iqm(values, axis=-1):
    """The interquartile mean: the mean of the middle 50 % (25 % trimmed from each end)."""
    return trim_mean(values, 0.25, axis=axis)


def interval(runs: list[list[float]], statistic) -> tuple[float, float, float]:
    """`statistic` of every run's episodes pooled, and its 95 % bootstrap interval, the episodes resampled
    within each run (one run: plainly)."""
    pooled = np.concatenate([np.asarray(r, dtype=float) for r in runs])
    value = float(statistic(pooled))
    if len(pooled) < 2 or np.ptp(pooled) == 0:
        return value, value, value
    samples = [np.asarray(r, dtype=float) for r in runs]
    res = bootstrap(samples, lambda *xs, axis=-1: statistic(np.concatenate(xs, axis=axis), axis=axis),
                    n_resamples=RESAMPLES, method="percentile", random_state=0, vectorized=True)  # fmt: skip
    return value, float(res.confidence_interval.low), float(res.confidence_interval.high)


def cavlab(*args: str) -> None:
    """One `cavlab` command; its failure stops the benchmark with its message."""
    done = subprocess.run([sys.executable, "-m", "cavlab.cli", *args], check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): cavlab {' '.join(args)}")


def evaluation_curve(folder: Path) -> list[tuple[int, float]]:
    """(timesteps, mean return) of each evaluation during a training (its evaluation.csv)."""
    by_step: dict[int, list[float]] = {}
    with (folder / "evaluation.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            by_step.setdefault(int(row["timesteps"]), []).append(float(row["return"]))
    return [(step, float(np.mean(v))) for step, v in sorted(by_step.items())]


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path, title: str) -> None:
    """Per algorithm: the mean over seeds of the evaluation returns, shaded between the seeds' min and max."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for (algo, runs), color in zip(curves.items(), ("tab:blue", "tab:orange"), strict=False):
        n = min(len(r) for r in runs)
        steps = np.array([s for s, _ in runs[0][:n]])
        values = np.array([[v for _, v in r[:n]] for r in runs])
        ax.plot(steps, values.mean(axis=0), "o-", color=color, label=f"{algo.upper()} ({len(runs)} seeds)")
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-ids", nargs="+", default=list(ENV_IDS))
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--episodes", type=int, default=30, help="evaluation episodes per policy")
    parser.add_argument("--env", action="append", default=[], help="an environment option for every run")
    parser.add_argument("--search-length", type=int, default=3, help="the open-loop baseline's longest sequence")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-training"))
    args = parser.parse_args()
    env_opts = [f"--env={option}" for option in args.env]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    table = ["| environment | policy | runs × episodes | mean [95 % CI] | IQM [95 % CI] | IQM above every baseline |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for env_id in args.env_ids:
        slug = env_id.split("/")[-1]
        env_dir = args.out / slug
        curves: dict[str, list] = {}
        policies = []
        for algo in args.algos:
            for seed in args.seeds:
                run = env_dir / f"{algo}-seed{seed}"
                record = run / "train.json"
                complete = record.is_file() and json.loads(record.read_text())["complete"]
                if not complete:  # not run yet, or interrupted: resumed
                    cavlab("train", env_id, "--algo", algo, "--seed", str(seed), "--timesteps", str(args.timesteps),
                           "--envs", str(TRAIN_ENVS[algo]), "--eval-every", str(max(1, args.timesteps // 10)),
                           "--eval-episodes", "5", *env_opts, "--out", str(run),
                           *(["--resume"] if record.is_file() else []))  # fmt: skip
                curves.setdefault(algo, []).append(evaluation_curve(run))
                policies += ["--policy", str(run / "policy.zip")]
        evaluation = env_dir / "evaluate"
        if not (evaluation / "evaluation.json").is_file():
            cavlab("evaluate", env_id, *policies, "--episodes", str(args.episodes), "--seed", str(EVAL_SEED),
                   "--baseline", "all", "--search-length", str(args.search_length), *env_opts,
                   "--out", str(evaluation))  # fmt: skip
        evaluated = json.loads((evaluation / "evaluation.json").read_text())["results"]
        groups: dict[str, list[list[float]]] = {}
        for name, result in evaluated.items():
            trained = name.removeprefix("trained:")
            group = trained.split("-seed")[0].upper() if name.startswith("trained:") else name
            groups.setdefault(group, []).append(result["returns"])
        summary = {}
        for group, runs in groups.items():
            mean, mean_lo, mean_hi = interval(runs, lambda x, axis=-1: np.mean(x, axis=axis))
            value, lo, hi = interval(runs, iqm)
            summary[group] = {"runs": len(runs), "episodes": len(runs[0]), "mean": [mean, mean_lo, mean_hi],
                              "iqm": [value, lo, hi], "trained": group in {a.upper() for a in args.algos}}  # fmt: skip
        baselines = [s for s in summary.values() if not s["trained"]]
        for group, s in summary.items():
            if s["trained"]:
                s["beats_every_baseline"] = all(s["iqm"][1] > b["iqm"][2] for b in baselines)
            beats = {True: "yes", False: "no"}.get(s.get("beats_every_baseline"), "")
            table.append(f"| {env_id} | {group} | {s['runs']} × {s['episodes']} | {s['mean'][0]:.1f} "
                         f"[{s['mean'][1]:.1f}, {s['mean'][2]:.1f}] | {s['iqm'][0]:.1f} [{s['iqm'][1]:.1f}, "
                         f"{s['iqm'][2]:.1f}] | {beats} |")  # fmt: skip
        results[env_id] = summary
        plot_curves(curves, args.out / f"learning_curves_{slug}.png", f"{env_id}: evaluation during training")
    meta = {"timesteps": args.timesteps, "seeds": args.seeds, "episodes": args.episodes, "eval_seed": EVAL_SEED,
            "env_options": args.env, "results": results}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(meta, indent=1))
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
