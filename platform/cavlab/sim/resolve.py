"""A scenario as a run uses it: the pure schema (`cavlab.config`) checked against the parts it names.

`load_scenario` reads a scenario and resolves it: the controller must exist and its parameters
validate against the controller's own `Params` model (defaults filled in, so a run's
scenario.yaml records every value used); the perception model directory must hold a
checkpoint and the edge target must exist; an external network's paths are made absolute (relative
to the scenario file) and its files, edges and flows checked. Failures are one-line `ScenarioError`s naming the
file and the field.
"""

from __future__ import annotations

from pathlib import Path

from cavlab.config.files import check_regular_file
from cavlab.config.scenario import Scenario, read_scenario, resolve_scenario_path
from cavlab.controllers import CONTROLLERS, controller_params
from cavlab.errors import ScenarioError, UserError
from cavlab.hw.targets import targets
from cavlab.sim.network import build_network, check_external_demand, resolve_network_path


def resolve_scenario(scenario: Scenario, source: str = "<scenario>") -> Scenario:
    """`scenario` with its controller's parameters checked and completed, its files and target checked."""
    control = scenario.control
    if control.controller not in CONTROLLERS:
        raise ScenarioError(
            f"{source}: control.controller: unknown controller '{control.controller}' "
            f"(available: {', '.join(sorted(CONTROLLERS))})"
        )
    try:
        params = controller_params(control.controller, control.params).model_dump(mode="json")
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    perception = scenario.perception
    if perception.model is not None:
        checkpoint = Path(perception.model) / "checkpoint.pt"
        if not checkpoint.exists():
            raise ScenarioError(
                f"{source}: perception.model: {perception.model} has no checkpoint.pt "
                f"(a directory from `cavlab perception train`)"
            )
        try:  # its contents are checked when a run loads it (cavlab.perception.training.load_checkpoint)
            check_regular_file(checkpoint, "checkpoint", max_bytes=None)
        except UserError as exc:
            raise ScenarioError(f"{source}: perception.model: {exc}") from None
    known = targets()
    if perception.target not in known:
        raise ScenarioError(
            f"{source}: perception.target: unknown target '{perception.target}' (available: {', '.join(known)})"
        )
    scenario = scenario.model_copy(update={"control": control.model_copy(update={"params": params})})
    return _resolve_network(scenario, source) if scenario.road.network is not None else scenario


def _resolve_network(scenario: Scenario, source: str) -> Scenario:
    """The scenario with `road.network`'s paths absolute, its network read (or converted) and its demand
    checked against it."""
    spec = scenario.road.network
    base = Path(source).parent if Path(source).is_file() else Path.cwd()

    def absolute(value: str) -> str:
        return str(resolve_network_path(value, base).absolute())

    spec = spec.model_copy(update={
        "file": absolute(spec.file),
        "route_files": [absolute(f) for f in spec.route_files],
        "additional_files": [absolute(f) for f in spec.additional_files],
    })  # fmt: skip
    scenario = scenario.model_copy(update={"road": scenario.road.model_copy(update={"network": spec})})
    try:
        check_external_demand(scenario, build_network(scenario.road))
    except UserError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    return scenario


def load_scenario(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Read a shipped scenario (by name) or a YAML file, apply `key.path=value` overrides, validate
    and resolve it; every failure is a `ScenarioError`."""
    path = resolve_scenario_path(str(name_or_path))
    return resolve_scenario(read_scenario(path, overrides), str(path))
