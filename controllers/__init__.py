"""Controllers: objects with one step method, `WorldState -> list[Command]`.

`CONTROLLERS` names every controller a scenario can select; classes load lazily so that
importing the registry stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pydantic import BaseModel, ValidationError

from cavlab.controllers.base import Controller, ControllerReport, ControlSetup
from cavlab.errors import ScenarioError, validation_message

CONTROLLERS: dict[str, str] = {
    "sumo": "cavlab.controllers.sumo_driver:SumoDriver",
    "cooperative": "cavlab.controllers.cooperative:CooperativeLaneChange",
    "selfish": "cavlab.controllers.cooperative:SelfishLaneChange",
}


def controller_class(name: str) -> type[Controller]:
    """The class registered under `name`."""
    try:
        module, _, attr = CONTROLLERS[name].partition(":")
    except KeyError:
        raise ScenarioError(f"unknown controller '{name}' (available: {', '.join(sorted(CONTROLLERS))})") from None
    return getattr(import_module(module), attr)


def controller_params(name: str, params: dict[str, Any]) -> BaseModel:
    """Validate a controller's parameters against its `Params` model."""
    model = controller_class(name).Params
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        unknown = "control.params.{field}: unknown parameter of controller '{name}' (allowed: {allowed})"
        message = validation_message(
            exc, model, unknown=unknown, unknown_none_allowed=unknown.replace("{allowed}", "none"),
            invalid="control.params.{field}: {msg}", strip_value_error=False, values={"name": name},
        )  # fmt: skip
        raise ScenarioError(message) from None


def make_controller(name: str, params: dict[str, Any], setup: ControlSetup) -> Controller:
    """Build the named controller from validated parameters."""
    return controller_class(name)(controller_params(name, params), setup)


__all__ = [
    "CONTROLLERS",
    "ControlSetup",
    "Controller",
    "ControllerReport",
    "controller_class",
    "controller_params",
    "make_controller",
]
