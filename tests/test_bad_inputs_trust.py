"""No code runs from a file, nothing listens beyond the machine, training survives Ctrl-C, TraCI with a
relative --out: policies and checkpoints whose unpickling would run code (a marker file must not
appear), the listening sockets of a local Ray and of SUMO's TraCI server read from the OS, a
SIGINT during `cavlab train` and the resumed run, and every bad policy file as one clear error."""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cavlab.cli import app
from cavlab.errors import SimulationError
from cavlab.rl.common import TrainRecord, write_record
from cavlab.rl.rllib import RLMODULE_SUBDIR
from cavlab.rl.sb3 import load_policy, save_policy
from cavlab.sim.backends import make_backend
from cavlab.sim.engine import Engine

from .conftest import short
from .interrupt import interrupt_after_first_checkpoint, one_thread_env

runner = CliRunner()
ENV = "cavlab/LaneChange-v0"


class Marker:
    """Unpickling this creates the file `path` (builtins.open): a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def one_error_line(result, *words: str) -> str:
    """The run ended with exit 2 and one `error:` line holding every word, and nothing else."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def record(folder: Path, **fields) -> None:
    """A train.json as `cavlab train` writes it."""
    base = {"env_id": ENV, "algo": "ppo", "backend": "sb3", "timesteps": 512, "target_timesteps": 512,
            "complete": True, "envs": 1, "seed": 0, "env_kwargs": {}, "episodes": 3, "wall_time_s": 1.0}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder, TrainRecord(**(base | fields)))


def ppo_policy(observation_shape: tuple[int, ...] = (7, 4)):
    """An untrained SB3 PPO MlpPolicy for LaneChange-v0's spaces (or other observations)."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    torch.manual_seed(0)
    space = gym.spaces.Box(-1.0, 1.0, observation_shape, np.float32)
    return ActorCriticPolicy(space, gym.spaces.Discrete(5), lr_schedule=lambda _: 1e-3)


def evaluate(policy: Path, out: Path):
    return runner.invoke(app, ["evaluate", ENV, "--policy", str(policy), "--episodes", "1", "--out", str(out)])


# ----------------------------------------------------------------------------- SB3 policies


def test_marker_payload_is_live(tmp_path: Path) -> None:
    """The payload the tests below hide does run code when unpickled: the refusals are what keeps it out."""
    pickle.loads(pickle.dumps(Marker(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def test_sb3_save_with_pickled_data_is_refused_unread(tmp_path: Path) -> None:
    folder, marker = tmp_path / "train", tmp_path / "marker"
    record(folder)
    weights = io.BytesIO()
    torch.save(ppo_policy().state_dict(), weights)
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>",
                             ":serialized:": base64.b64encode(pickle.dumps(Marker(marker))).decode()}}  # fmt: skip
    with zipfile.ZipFile(folder / "policy.zip", "w") as zf:  # Stable-Baselines3's layout
        zf.writestr("data", json.dumps(data))
        zf.writestr("policy.pth", weights.getvalue())
        zf.writestr("_stable_baselines3_version", "2.9.2")
    one_error_line(evaluate(folder / "policy.zip", tmp_path / "out"), "policy.zip", "Stable-Baselines3 save", "pickled")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding", ["torch.save", "plain pickle"])
def test_pickled_code_in_the_weights_is_refused(tmp_path: Path, encoding: str) -> None:
    folder, marker = tmp_path / "train", tmp_path / "marker"
    record(folder)
    if encoding == "torch.save":
        buffer = io.BytesIO()
        torch.save({"mlp_extractor.policy_net.0.weight": Marker(marker)}, buffer)
        payload = buffer.getvalue()
    else:
        payload = pickle.dumps(Marker(marker))
    with zipfile.ZipFile(folder / "policy.zip", "w") as zf:
        zf.writestr("policy.pth", payload)
    one_error_line(evaluate(folder / "policy.zip", tmp_path / "out"), "policy.pth", "not a torch file of tensors only")
    assert not marker.exists() and not (tmp_path / "out").exists()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _weights(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda f: f.joinpath("policy.zip").write_text("not a zip"), ["not a readable zip archive"]),
        (lambda f: _zip(f / "policy.zip", {}), ["holds nothing", "allowed: policy.pth"]),
        (lambda f: _zip(f / "policy.zip", {"policy.pth": _weights({}), "x.py": b""}), ["holds policy.pth, x.py"]),
        (lambda f: _zip(f / "policy.zip", {"policy.pth": b"\x00garbage"}), ["policy.pth is not a torch file"]),
        (lambda f: _zip(f / "policy.zip", {"policy.pth": _weights([1, 2])}), ["not a state dict of tensors"]),
        (lambda f: _zip(f / "policy.zip", {"policy.pth": _weights({"w": torch.zeros(2)})}), ["lacks", "--algo"]),
        (lambda f: save_policy(ppo_policy((10,)), f / "policy.zip"), ["other observations", "same --env options"]),
        (lambda f: f.joinpath("policy.zip").mkdir(), ["not an RLlib checkpoint"]),
        (lambda f: os.mkfifo(f / "policy.zip"), ["not a regular file"]),
    ],
    ids=["text", "empty-zip", "extra-entry", "garbage", "not-a-dict", "wrong-keys", "wrong-shapes", "dir", "fifo"],
)
def test_bad_policy_files_give_one_line(tmp_path: Path, make, words: list[str]) -> None:
    folder = tmp_path / "train"
    record(folder)
    make(folder)
    one_error_line(evaluate(folder / "policy.zip", tmp_path / "out"), *words)
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    record(folder)
    policy = ppo_policy()
    with torch.no_grad():
        next(policy.parameters())[0, 0] = float("nan")
    save_policy(policy, folder / "policy.zip")
    one_error_line(evaluate(folder / "policy.zip", tmp_path / "out"), "NaN or infinite")


@pytest.mark.parametrize(
    ("train_json", "words"),
    [
        (None, ["no train.json"]),
        ("{}", ["train.json", "env_id"]),
        ('{"algo": NaN}', ["'NaN' is not JSON"]),
        ("[1]", ["train.json", "valid dictionary"]),
    ],
)
def test_bad_train_json_gives_one_line(tmp_path: Path, train_json: str | None, words: list[str]) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    save_policy(ppo_policy(), folder / "policy.zip")
    if train_json is not None:
        (folder / "train.json").write_text(train_json)
    one_error_line(evaluate(folder / "policy.zip", tmp_path / "out"), *words)


@pytest.mark.sumo
@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_trained_policy_acts_as_sb3_predicts(tmp_path: Path, algo: str) -> None:
    """A genuinely trained model, saved as cavlab saves it and loaded without unpickling: the same actions as
    SB3's own predict, on every observation of an episode."""
    import stable_baselines3 as sb3

    env = gym.make(f"cavlab.envs:{ENV}")
    try:
        if algo == "ppo":
            model = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
        else:
            model = sb3.DQN("MlpPolicy", env, learning_starts=32, train_freq=4, seed=0, device="cpu")
        model.learn(128)
        folder = tmp_path / algo
        record(folder, algo=algo)
        save_policy(model.policy, folder / "policy.zip")
        act = load_policy(folder / "policy.zip", env)
        obs, _ = env.reset(seed=11)
        for _ in range(60):
            expected = model.predict(obs, deterministic=True)[0]
            assert act(obs) == expected
            obs, _, terminated, truncated, _ = env.step(expected)
            if terminated or truncated:
                obs, _ = env.reset(seed=12)
    finally:
        env.close()


# ----------------------------------------------------------------------------- RLlib checkpoints


def _rllib_checkpoint(folder: Path, state_pickle: bytes, ctor_pickle: bytes) -> Path:
    """A training directory with an RLlib checkpoint's module files (only those cavlab looks at)."""
    record(folder, backend="rllib")
    module = folder / "checkpoint" / RLMODULE_SUBDIR
    module.mkdir(parents=True)
    (module / "module_state.pkl").write_bytes(state_pickle)
    (module / "class_and_ctor_args.pkl").write_bytes(ctor_pickle)
    (module / "metadata.json").write_text('{"state_file": "module_state"}')
    return folder / "checkpoint"


def test_rllib_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps(Marker(marker))
    checkpoint = _rllib_checkpoint(tmp_path / "rllib", payload, payload)
    one_error_line(evaluate(checkpoint, tmp_path / "out"), "module_state.pkl", "(io.open)", "plain arrays")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"w": [1.0]}, ["a dict of float weight arrays"]),
        ({"w": np.array([np.inf], np.float32)}, ["w holds NaN or infinite"]),
        ({"w": np.zeros(2, np.float32)}, ["not weights of cavlab's PPO module"]),
    ],
    ids=["list", "inf", "wrong-keys"],
)
def test_bad_rllib_weights_give_one_line(tmp_path: Path, state, words: list[str]) -> None:
    checkpoint = _rllib_checkpoint(tmp_path / "rllib", pickle.dumps(state), b"")
    one_error_line(evaluate(checkpoint, tmp_path / "out"), *words)


def test_rllib_module_saved_by_rllib_loads_without_its_pickles(tmp_path: Path) -> None:
    """RLlib's own `save_to_path` writes the module; cavlab reads back its weights alone (never the pickled
    class and constructor arguments, emptied here) and computes the same action logits."""
    from dataclasses import asdict

    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    from cavlab.rl.rllib import _model_config, load_policy

    env = gym.make(f"cavlab.envs:{ENV}")
    torch.manual_seed(3)
    module = DefaultPPOTorchRLModule(
        observation_space=gym.spaces.flatten_space(env.observation_space), action_space=env.action_space,
        inference_only=False, learner_only=False, model_config=asdict(_model_config()), catalog_class=PPOCatalog,
    )  # fmt: skip
    folder = tmp_path / "rllib"
    record(folder, backend="rllib")
    path = folder / "checkpoint" / RLMODULE_SUBDIR
    module.save_to_path(str(path))
    (path / "class_and_ctor_args.pkl").write_bytes(b"")
    act = load_policy(folder / "checkpoint", env)
    env.close()
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = rng.uniform(-1, 1, 28).astype(np.float32)
        with torch.no_grad():
            logits = module.forward_inference({"obs": torch.as_tensor(obs[None])})["action_dist_inputs"]
        assert act(obs) == int(torch.argmax(logits))


# ----------------------------------------------------------------------------- what listens where


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/{tcp,udp}[6] writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def exposed_sockets(pids: list[int]) -> tuple[list[tuple], list[tuple]]:
    """(listening or bound sockets of these processes, the ones not on the loopback): each (pid, protocol,
    address, port), read from /proc/net: TCP sockets in LISTEN, and every UDP socket."""
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in owner and (protocol.startswith("udp") or state == "0A"):
                address, port = local.split(":")
                found.append((owner[inode], protocol, _address(address), int(port, 16)))
    return found, [s for s in found if not _is_loopback(s[2])]


RAY_DRIVER = """
import sys
import ray  # imported before cavlab starts it, as `cavlab sweep` does
from cavlab.runs.ray_local import init_ray

init_ray(None, 1)
assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process too
print("ready", flush=True)
sys.stdin.read()
ray.shutdown()
"""


def test_local_ray_listens_on_the_loopback_only(tmp_path: Path) -> None:
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")  # "local" starts a new instance whatever this says
    proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        found, exposed = exposed_sockets(_process_tree(proc.pid))
        names = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() for pid, *_ in found}
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
        assert exposed == [], exposed
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.sumo
def test_traci_port_closes_once_cavlab_is_connected(tmp_path: Path) -> None:
    """SUMO's TraCI server cannot be bound to the loopback (it listens on 0.0.0.0 until its client
    connects); once connected, with --num-clients 1, SUMO listens on nothing."""
    scenario = short("lane-drop", "simulation.backend=traci")
    engine = Engine(scenario, tmp_path / "sumo")
    with make_backend(scenario, engine.network, engine.inputs) as backend:
        backend.start(engine.controller.modes)
        backend.step()
        found, _ = exposed_sockets([backend.process.pid])
        assert found == []


# ----------------------------------------------------------------------------- TraCI and a relative --out


@pytest.mark.sumo
def test_traci_run_into_a_relative_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["run", "highway", "--set", "simulation.backend=traci", "--set",
                               "simulation.duration_s=20", "--set", "simulation.warmup_s=0",
                               "--out", "runs_rel/x"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "runs_rel" / "x" / "summary.json").read_text())["scenario"] == "highway"


@pytest.mark.sumo
def test_sumo_start_failure_names_sumos_own_error(tmp_path: Path) -> None:
    scenario = short("lane-drop", "simulation.backend=traci")
    engine = Engine(scenario, tmp_path / "sumo")
    engine.inputs.config.unlink()
    backend = make_backend(scenario, engine.network, engine.inputs)
    with pytest.raises(SimulationError) as caught:
        backend.start(engine.controller.modes)
    message = str(caught.value)
    assert "\n" not in message and "Could not access configuration" in message and "run.sumocfg" in message
    assert "already finished" not in message


# ----------------------------------------------------------------------------- Ctrl-C during training


def test_rerun_into_an_interrupted_training_points_at_resume(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    record(folder, complete=False, target_timesteps=4096)
    done = runner.invoke(app, ["train", ENV, "--out", str(folder)])
    one_error_line(done, "interrupted training (512 of 4096 steps)", "--resume")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--algo", "dqn"], ["--resume", "trained with --algo ppo, not dqn"]),
        (["--env", "reward.collision=5"], ["--resume", "trained with --env {}"]),
        (["--backend", "rllib"], ["--resume needs --backend sb3"]),
        (["--timesteps", "100"], ["already trained for 512 steps", "over 512"]),
    ],
)
def test_bad_resume_gives_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    folder = tmp_path / "train"
    record(folder)
    save_policy(ppo_policy(), folder / "policy.zip")
    one_error_line(runner.invoke(app, ["train", ENV, "--out", str(folder), "--resume", *args]), *words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", ENV, "--seed", "-1"], ["--seed must be between 0 and 4294967295 (got -1)"]),
        (["train", ENV, "--envs", "5000"], ["--envs must be at most 1024"]),
        (["train", ENV, "--checkpoint-every", "0"], ["--checkpoint-every ≥ 1"]),
        (["evaluate", ENV, "--seed", "-3"], ["--seed must be between 0 and"]),
    ],
)
def test_bad_training_options_give_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    one_error_line(runner.invoke(app, [*args, "--out", str(tmp_path / "out")]), *words)
    assert list(tmp_path.iterdir()) == []


def test_resume_of_nothing_gives_one_line(tmp_path: Path) -> None:
    done = runner.invoke(app, ["train", ENV, "--out", str(tmp_path / "none"), "--resume"])
    one_error_line(done, "not a training directory; nothing to resume")
    assert not (tmp_path / "none").exists()


def _train_command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cavlab.cli", "train", ENV, "--envs", "1", "--checkpoint-every", "1",
            "--out", str(out), *args]  # fmt: skip


@pytest.mark.sumo
def test_ctrl_c_keeps_the_checkpoint_and_resume_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "train"
    done = interrupt_after_first_checkpoint(
        _train_command(out, "--timesteps", "100000"), tmp_path, ".train.partial-*/train.json", 120, 60
    )
    stderr = done.stderr
    assert done.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted: the checkpoint at" in lines[0] and "Traceback" not in stderr
    assert f"--out {out} --checkpoint-every 1 --resume" in lines[0]
    kept = json.loads((out / "train.json").read_text())
    assert kept["complete"] is False and kept["timesteps"] >= 512 and kept["target_timesteps"] == 100000
    assert not list(tmp_path.glob(".train.partial-*"))
    probe = gym.make(f"cavlab.envs:{ENV}")  # the checkpoint is a loadable policy
    try:
        act = load_policy(out / "policy.zip", probe)
        assert probe.action_space.contains(int(act(probe.observation_space.sample())))
    finally:
        probe.close()
    target = str(kept["timesteps"] + 512)
    resumed = subprocess.run(_train_command(out, "--timesteps", target, "--resume"), capture_output=True, text=True,
                             env=one_thread_env(), timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at {kept['timesteps']} steps" in " ".join(resumed.stdout.split())
    final = json.loads((out / "train.json").read_text())
    assert final["complete"] is True and final["timesteps"] == int(target)
    assert final["episodes"] > kept["episodes"] and len(list((out / "monitor").glob("*.monitor.csv"))) == 2
