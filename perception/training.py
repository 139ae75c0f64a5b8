"""Training and evaluation of the gated fusion model on a perception dataset.

Split by seed: the last seed of the dataset is the test set; the others are for training,
with 15 % of their frames held out to fit the gates (the knowledge table and the deep gate
learn from losses the branches did not train on). Evaluation per context on the test set:
the accuracy (fraction of neighbour slots right, `task.slot_correct`) and the energy per frame
of every branch, of all branches fused, and of the knowledge, deep and oracle gates.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from cavlab.config.files import read_bytes
from cavlab.errors import UserError, validation_message
from cavlab.perception.dataset import load_dataset
from cavlab.perception.fusion import (
    BATCH,
    BRANCHES,
    CONFIGURATIONS,
    HIDDEN,
    DeepGate,
    FusionModel,
    Selection,
    energy_pj,
    estimates,
    frames_of,
    fuse,
    slot_loss,
)
from cavlab.perception.sensors import frame_shapes
from cavlab.perception.spiking_branch import SpikingHead, train_spiking_branch
from cavlab.perception.task import slot_correct


def split(arrays: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the training, gate-fitting and test frames."""
    seeds = np.unique(arrays["seed"])
    if len(seeds) < 2:
        raise UserError("the dataset needs at least 2 seeds (the last one is the test set): use --seeds 2 or more")
    test = np.flatnonzero(arrays["seed"] == seeds[-1])
    rest = np.flatnonzero(arrays["seed"] != seeds[-1])
    rng = np.random.default_rng(seed)
    rest = rest[rng.permutation(len(rest))]
    cut = int(0.85 * len(rest))
    return rest[:cut], rest[cut:], test


def train_branches(model: FusionModel, arrays: dict[str, np.ndarray], rows: np.ndarray, epochs: int, seed: int,
                   progress: Callable[[int, float], None] | None = None) -> None:  # fmt: skip
    """All branches at once: the sum of their losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    targets = torch.from_numpy(arrays["targets"])
    model.train()
    for epoch in range(epochs):
        order = rows[rng.permutation(len(rows))]
        total = 0.0
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            outputs = model(frames_of(arrays, batch))
            loss = sum(slot_loss(o, targets[batch]).mean() for o in outputs.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        if progress is not None:
            progress(epoch + 1, total / len(order))
    model.eval()


@torch.no_grad()
def configuration_outputs(model: FusionModel, arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per configuration: the estimates (N, 6, 3) and the per-frame losses (N,)."""
    targets = torch.from_numpy(arrays["targets"])
    out: dict[str, list] = {c: [] for c in CONFIGURATIONS}
    losses: dict[str, list] = {c: [] for c in CONFIGURATIONS}
    for start in range(0, len(rows), 4 * BATCH):
        batch = rows[start : start + 4 * BATCH]
        outputs = model(frames_of(arrays, batch))
        outputs["all branches"] = fuse(list(outputs.values()))
        for c in CONFIGURATIONS:
            out[c].append(estimates(outputs[c]))
            losses[c].append(slot_loss(outputs[c], targets[batch]).numpy())
    return {c: np.concatenate(out[c]) for c in CONFIGURATIONS} | {
        f"loss:{c}": np.concatenate(losses[c]) for c in CONFIGURATIONS
    }


def fit_deep_gate(model: FusionModel, arrays: dict[str, np.ndarray], rows: np.ndarray, losses: np.ndarray,
                  epochs: int, seed: int) -> DeepGate:  # fmt: skip
    """Regress every configuration's loss (on frames the branches did not train on)."""
    torch.manual_seed(seed)
    gate = DeepGate()
    optimizer = torch.optim.Adam(gate.parameters(), lr=2e-3)
    target = torch.from_numpy(losses.astype(np.float32))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for start in range(0, len(rows), BATCH):
            idx = rng.permutation(len(rows))[start : start + BATCH]
            frames = frames_of(arrays, rows[idx])
            with torch.no_grad():
                radar = model.stems["radar"](frames["radar"])
            loss = torch.nn.functional.mse_loss(gate(radar, frames), target[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    gate.eval()
    return gate


def train_fusion(
    data_dir: Path, out_dir: Path, epochs: int = 6, seed: int = 0, selection: Selection | None = None,
    progress: Callable[[str], None] | None = None, hidden: int = HIDDEN, spiking: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Train the branches (heads `hidden` wide), fit the gates, train the spiking branch (if `spiking`),
    save `checkpoint.pt` into `out_dir` and evaluate on the test seed (results.json, accuracy_energy.png,
    spiking.png); the results."""
    selection = selection or Selection()
    manifest, arrays = load_dataset(data_dir)
    train, held_out, test = split(arrays, seed)
    torch.manual_seed(seed)  # the initial weights
    model = FusionModel(manifest["shapes"], hidden)
    started = time.perf_counter()
    train_branches(model, arrays, train, epochs, seed,
                   progress=lambda e, loss: progress and progress(f"epoch {e}/{epochs}: loss {loss:.3f}"))  # fmt: skip
    train_s = time.perf_counter() - started
    energies = configuration_energies(model)
    held = configuration_outputs(model, arrays, held_out)
    held_losses = np.stack([held[f"loss:{c}"] for c in CONFIGURATIONS], axis=1)
    table = {}  # knowledge gate: per context label, EcoFusion's choice on the mean held-out losses
    for k, label in enumerate(manifest["contexts"]):
        mean = held_losses[arrays["context"][held_out] == k].mean(axis=0, keepdims=True)
        table[label] = CONFIGURATIONS[int(selection.choose(mean, energies)[0])]
    gate = fit_deep_gate(model, arrays, held_out, held_losses, epochs=30, seed=seed)
    checkpoint = {"model": model.state_dict(), "gate": gate.state_dict(), "shapes": manifest["shapes"],
                  "hidden": hidden, "knowledge_table": table, "selection": vars(selection),
                  "spiking": None}  # fmt: skip
    if spiking:
        if progress is not None:
            progress("the spiking branch")
        head, spiking_results = train_spiking_branch(model, arrays, train, test, manifest["contexts"], seed=seed)
        checkpoint["spiking"] = {"branch": spiking_results["branch"], "state": head.state_dict()}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out_dir / "checkpoint.pt")
    results = evaluate(out_dir, data_dir, rows=test)
    if spiking:
        results["spiking"] = spiking_results
        plot_spiking(spiking_results, out_dir / "spiking.png")
    results["train_time_s"] = round(train_s, 1)
    results["frames"] = {"train": len(train), "gates": len(held_out), "test": len(test)}
    write_results(results, out_dir)
    return results


def write_results(results: dict[str, Any], folder: Path) -> None:
    """results.json and accuracy_energy.png into `folder`."""
    (Path(folder) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_accuracy_energy(results, Path(folder) / "accuracy_energy.png")


def configuration_energies(model: FusionModel) -> np.ndarray:
    macs = model.configuration_macs()
    return np.array([energy_pj(macs[c]) for c in CONFIGURATIONS])


MAX_CHECKPOINT_BYTES = 256 * 1024**2
CHECKPOINT_HOLDS = (  # and the heads' width, hidden (512 where absent)
    "a checkpoint from `cavlab perception train` holds model, gate, shapes, knowledge_table, selection, spiking"
)
StateDict = dict[str, torch.Tensor]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


class _Selection(_Part):
    gamma: Annotated[float, Field(ge=0)]
    energy_weight: Annotated[float, Field(ge=0, le=1)]


class _Spiking(_Part):
    branch: Literal[tuple(BRANCHES)]
    state: StateDict


class Checkpoint(_Part):
    """The schema of `checkpoint.pt` (the weights are checked against the modules when loaded)."""

    model_config = ConfigDict(extra="ignore")

    model: StateDict
    gate: StateDict
    shapes: Annotated[dict[str, list[int]], BeforeValidator(frame_shapes)]
    hidden: Annotated[int, Field(ge=1, le=4096)] = HIDDEN
    knowledge_table: dict[str, Literal[CONFIGURATIONS]]
    selection: _Selection
    spiking: _Spiking | None = None


def load_checkpoint(out_dir: Path) -> tuple[FusionModel, DeepGate, dict[str, Any]]:
    """The fusion model, its deep gate and the checkpoint of a model directory. The file is read with
    `cavlab.config.files` (a regular file of at most `MAX_CHECKPOINT_BYTES`), loaded with
    `weights_only=True` (tensors and plain data: no code runs) and checked against `Checkpoint` and the
    modules; every failure is a one-line `UserError` naming the file and the key."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"{out_dir} has no checkpoint.pt (a directory written by `cavlab perception train`)")
    data = read_bytes(path, "perception checkpoint", MAX_CHECKPOINT_BYTES)
    try:
        with warnings.catch_warnings():  # e.g. on the pickle protocol: the result is checked below
            warnings.simplefilter("ignore")
            raw = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # torch's own text advises loading with code execution: never shown
        raise UserError(f"{path}: not a cavlab perception checkpoint: not a torch file of tensors and plain data "
                        f"(cavlab loads no other Python objects; {CHECKPOINT_HOLDS})") from None  # fmt: skip
    try:
        spec = Checkpoint.model_validate(raw)
    except ValidationError as exc:
        line = validation_message(exc, Checkpoint, missing="missing key '{field}'", invalid_at_root="not a mapping")
        raise UserError(f"{path}: not a cavlab perception checkpoint: {line} ({CHECKPOINT_HOLDS})") from None
    model, gate = FusionModel(spec.shapes, spec.hidden), DeepGate()
    _load_weights(model, spec.model, path, "model")
    _load_weights(gate, spec.gate, path, "gate")
    ckpt = {**raw, "shapes": spec.shapes, "hidden": spec.hidden}
    spiking_head(ckpt, path)
    model.eval()
    gate.eval()
    return model, gate, ckpt


def spiking_head(ckpt: dict[str, Any], path: Path | str = "checkpoint.pt") -> SpikingHead | None:
    """The checkpoint's spiking head (of its `spiking.branch`), or None if it has none."""
    if ckpt.get("spiking") is None:
        return None
    head = SpikingHead(len(BRANCHES[ckpt["spiking"]["branch"]]))
    _load_weights(head, ckpt["spiking"]["state"], path, "spiking.state")
    return head.eval()


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | str, key: str) -> None:
    """`state` into `module`: the same names and shapes, finite values; else a `UserError` naming the key."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: {key}.{name} holds NaN or infinite values")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # torch lists every problem over several lines: the first is kept
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else "they do not fit"
        raise UserError(f"{path}: {key}: the weights do not fit a {type(module).__name__} for these shapes "
                        f"({first[:160]}{'…' if len(first) > 160 else ''})") from None  # fmt: skip


def check_shapes(model: dict[str, list[int]], data: dict[str, list[int]], data_dir: Path) -> None:
    """A `UserError` unless a dataset's frame shapes are the model's."""
    if {k: list(v) for k, v in model.items()} != {k: list(v) for k, v in data.items()}:
        raise UserError(f"{data_dir}: its frames ({data}) differ from the model's ({model})")


def evaluate(model_dir: Path, data_dir: Path, rows: np.ndarray | None = None) -> dict[str, Any]:
    """Per context of the dataset (all its frames, or `rows`): accuracy and energy per frame of every
    configuration and of the knowledge, deep and oracle gates. A context the knowledge table does not
    know runs all branches."""
    model, gate, ckpt = load_checkpoint(model_dir)
    manifest, arrays = load_dataset(data_dir)
    check_shapes(ckpt["shapes"], manifest["shapes"], data_dir)
    rows = np.arange(len(arrays["targets"])) if rows is None else rows
    selection = Selection(**ckpt["selection"])
    table = ckpt["knowledge_table"]
    labels = manifest["contexts"]
    energies = configuration_energies(model)
    grid_cells = int(np.prod(manifest["shapes"]["camera"]) + np.prod(manifest["shapes"]["lidar"]))
    gate_pj = energy_pj(gate.macs(model.stems["radar"], grid_cells))
    radar_pj = energy_pj(model.stems["radar"].macs())

    outputs = configuration_outputs(model, arrays, rows)
    losses = np.stack([outputs[f"loss:{c}"] for c in CONFIGURATIONS], axis=1)
    with torch.no_grad():
        frames = frames_of(arrays, rows)
        predicted = gate(model.stems["radar"](frames["radar"]), frames).numpy()
    context = arrays["context"][rows]
    correct = {c: slot_correct(outputs[c], arrays["targets"][rows]).mean(axis=1) for c in CONFIGURATIONS}
    fallback = CONFIGURATIONS.index("all branches")
    choices = {
        "knowledge gate": np.array(
            [CONFIGURATIONS.index(table[labels[k]]) if labels[k] in table else fallback for k in context]
        ),
        "deep gate": selection.choose(predicted, energies),
        "oracle gate": selection.choose(losses, energies),
    }
    results: dict[str, Any] = {"contexts": {}, "knowledge_table": table, "selection": vars(selection),
                               "energy_pj": dict(zip(CONFIGURATIONS, energies.tolist(), strict=True)),
                               "deep_gate_energy_pj": gate_pj}  # fmt: skip
    for k, label in enumerate([*labels, "all"]):
        sel = np.arange(len(rows)) if label == "all" else np.flatnonzero(context == k)
        if not len(sel):
            continue
        row: dict[str, dict[str, Any]] = {
            c: {"accuracy": float(correct[c][sel].mean()), "energy_pj": float(energies[i])}
            for i, c in enumerate(CONFIGURATIONS)
        }
        for name, choice in choices.items():
            picked = choice[sel]
            acc = np.array([correct[CONFIGURATIONS[p]][r] for p, r in zip(picked, sel, strict=True)])
            energy = energies[picked]
            if name == "deep gate":  # the gate runs first; its radar stem is not run again
                radar = np.array([CONFIGURATIONS[p] == "all branches" or "radar" in BRANCHES[CONFIGURATIONS[p]]
                                  for p in picked])  # fmt: skip
                energy = energy + gate_pj - radar * radar_pj
            counts = {CONFIGURATIONS[p]: int((picked == p).sum()) for p in np.unique(picked)}
            row[name] = {"accuracy": float(acc.mean()), "energy_pj": float(energy.mean()), "choices": counts}
        results["contexts"][label] = row
    return results


def plot_spiking(spiking: dict[str, Any], path: Path) -> None:
    """Per context: the spiking branch's firing rates, and its accuracy and energy against the ANN's."""
    from matplotlib.figure import Figure  # no pyplot: no global state, the backend stays the user's

    labels = list(spiking["contexts"])
    rows = [spiking["contexts"][c] for c in labels]
    x = np.arange(len(labels))
    fig = Figure(figsize=(15, 3.8))
    axes = fig.subplots(1, 3)
    axes[0].bar(x - 0.2, [r["rate_layer1"] for r in rows], 0.4, label="layer 1")
    axes[0].bar(x + 0.2, [r["rate_layer2"] for r in rows], 0.4, label="layer 2")
    axes[0].set_ylabel("firing rate (spikes per neuron per active step)")
    axes[1].bar(x - 0.2, [r["spiking_accuracy"] for r in rows], 0.4, label="spiking")
    axes[1].bar(x + 0.2, [r["ann_accuracy"] for r in rows], 0.4, label="ANN")
    axes[1].set_ylabel("slot accuracy")
    axes[1].set_ylim(0.5, 1.0)
    axes[2].bar(x - 0.2, [r["spiking_energy_pj"] / 1e6 for r in rows], 0.4, label="spiking")
    axes[2].bar(x + 0.2, [r["ann_energy_pj"] / 1e6 for r in rows], 0.4, label="ANN")
    axes[2].set_ylabel("energy per frame [µJ]")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"spiking {spiking['branch']} branch, T = {spiking['time_steps']} ({spiking['active_steps']} active)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def best_fusion(row: dict[str, dict[str, float]]) -> str:
    """The most accurate configuration that fuses sensors (a multi-sensor branch or all branches)."""
    fused = [c for c in CONFIGURATIONS if c == "all branches" or len(BRANCHES[c]) > 1]
    return max(fused, key=lambda c: row[c]["accuracy"])


def plot_accuracy_energy(results: dict[str, Any], path: Path) -> None:
    """Accuracy against energy per frame, one panel per context."""
    from matplotlib.figure import Figure

    labels = list(results["contexts"])
    cols = 3
    rows = (len(labels) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, label in zip(axes.flat, labels, strict=False):
        for name, r in results["contexts"][label].items():
            gate = name.endswith("gate")
            ax.scatter(r["energy_pj"] / 1e6, r["accuracy"], marker="*" if gate else "o", s=90 if gate else 30,
                       label=name)  # fmt: skip
        ax.set_title(label)
        ax.set_xlabel("energy per frame [µJ]")
        ax.set_ylabel("slot accuracy")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(labels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def results_markdown(results: dict[str, Any]) -> str:
    """Per context: each configuration's and gate's accuracy and energy per frame, then the gated
    models against the best fusion and against running all branches."""
    names = [*CONFIGURATIONS, "knowledge gate", "deep gate", "oracle gate"]
    contexts = list(results["contexts"])
    lines = ["| configuration | " + " | ".join(contexts) + " | energy per frame [µJ] |",
             "|---|" + "---|" * (len(contexts) + 1)]  # fmt: skip
    for name in names:
        cells = [f"{results['contexts'][c][name]['accuracy']:.3f}" for c in contexts]
        energy = results["contexts"]["all"][name]["energy_pj"] / 1e6
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {energy:.2f} |")
    all_pj = results["contexts"]["all"]["all branches"]["energy_pj"]
    header = "| context | best fusion | its accuracy | gate | gate accuracy | vs best fusion | energy vs all branches |"
    lines += ["", header, "|---|---|---|---|---|---|---|"]
    for c in contexts:
        row = results["contexts"][c]
        best = best_fusion(row)
        for gate in ("knowledge gate", "deep gate"):
            acc, pj, best_acc = row[gate]["accuracy"], row[gate]["energy_pj"], row[best]["accuracy"]
            lines.append(f"| {c} | {best} | {best_acc:.3f} | {gate} | {acc:.3f} | {100 * (acc / best_acc - 1):+.1f} % "
                         f"| {100 * (pj / all_pj - 1):+.0f} % |")  # fmt: skip
    if "spiking" in results:
        sp = results["spiking"]
        lines += ["", f"Spiking `{sp['branch']}` branch (T = {sp['time_steps']}, {sp['active_steps']} steps active) "
                      "against the same branch without spikes:", "",
                  "| context | accuracy, spiking | accuracy, ANN | firing rate layer 1 / 2 | energy spiking [µJ] "
                  "| energy ANN [µJ] |", "|---|---|---|---|---|---|"]  # fmt: skip
        for c, r in sp["contexts"].items():
            energies = f"{r['spiking_energy_pj'] / 1e6:.2f} | {r['ann_energy_pj'] / 1e6:.2f}"
            lines.append(f"| {c} | {r['spiking_accuracy']:.3f} | {r['ann_accuracy']:.3f} | {r['rate_layer1']:.3f} / "
                         f"{r['rate_layer2']:.3f} | {energies} |")  # fmt: skip
    return "\n".join(lines) + "\n"
