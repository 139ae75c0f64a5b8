"""SUMO's own outputs, as cross-checks of cavlab's metrics: what switches them on, and what they say.

`outputs.sumo` lists any of `tripinfo`, `lanechange` and `ssm`. Each adds options to the run's
.sumocfg (`sumo_output_options`); SUMO writes the file into the SUMO folder (`sumo/` of a run
directory), and `sumo_measures` reads it, after SUMO has closed, into a flat mapping that
`Engine.result` puts under `metrics["sumo"]`. The parsers stream (`iterparse`) and count over
the window of cavlab's metrics.

Time stamps. SUMO stamps a record with the time at the *start* of the step in which it happened:
a vehicle inserted, a lane change, an SSM extreme. cavlab reads the state *after* each step, so
it sees the same event at the stamp + Δt (checked against the trajectories: a vehicle's first row
is at `depart` + Δt, a lane change appears in `lane_changes.csv` at the `change` time + Δt, the
SSM's least TTC equals gap / closing speed of the state read at its time + Δt). The window is
applied to those seen times, with the rules of `cavlab.sim.metrics`: a trip counts if it was first
seen at or after the warm-up (the trip set), an event if it was seen after it (t > T_w).

- tripinfo (`--tripinfo-output`): one record per vehicle that arrived; `duration` is arrival −
  depart, the same difference as cavlab's travel time, since both ends are stamped alike. On an
  external network, the arrivals after the warm-up on the edges of the measurement points, per
  hour: with the default points (the exits, 1 m before their ends) what cavlab's throughput counts.
- lanechange (`--lanechange-output`): one `change` record when the vehicle's centre enters the new
  lane (with `lanechange.duration` > 0 that is the middle of the manoeuvre, the step in which its
  lane index flips), with SUMO's reason for it.
- ssm (the SSM device on every vehicle): one `conflict` per encounter in which TTC, DRAC or PET
  passed its threshold, with each measure's extreme value and its time; every vehicle has a
  device, so most conflicts are written twice (once from each vehicle), and are merged here.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cavlab.config.scenario import Scenario
from cavlab.errors import SimulationError

OUTPUT_FILES = {"tripinfo": "tripinfo.xml", "lanechange": "lanechanges.xml", "ssm": "ssm.xml"}

SSM_TTC_THRESHOLD_S = 3.0  # SUMO's defaults: an encounter is a conflict when TTC < 3 s,
SSM_DRAC_THRESHOLD_MPS2 = 3.0  # DRAC > 3 m/s²
SSM_PET_THRESHOLD_S = 2.0  # or PET < 2 s
SSM_RANGE_M = 50.0  # SUMO's default detection range
CRITICAL_TTC_S = 1.5  # as cavlab.sim.metrics.CRITICAL_TTC_S

LANE_CHANGE_REASONS = {  # SUMO's reason (the first of its `|`-joined flags) → key suffix
    "strategic": "strategic",
    "cooperative": "cooperative",
    "speedGain": "speed_gain",
    "keepRight": "keep_right",
    "sublane": "sublane",
    "traci": "traci",
}


def output_files(scenario: Scenario, folder: Path) -> dict[str, Path]:
    """The files of the SUMO outputs the scenario switches on, by name."""
    return {name: Path(folder) / OUTPUT_FILES[name] for name in scenario.outputs.sumo}


def sumo_output_options(scenario: Scenario) -> dict[str, dict[str, str]]:
    """The .sumocfg sections (section → option → value) for `outputs.sumo`; file names are relative to
    the .sumocfg, so SUMO writes them next to it."""
    wanted = scenario.outputs.sumo
    sections: dict[str, dict[str, str]] = {}
    output = {f"{name}-output": OUTPUT_FILES[name] for name in ("tripinfo", "lanechange") if name in wanted}
    if output:
        sections["output"] = output
    if "ssm" in wanted:
        sections["ssm_device"] = {
            "device.ssm.probability": "1",
            "device.ssm.measures": "TTC DRAC PET",
            "device.ssm.thresholds": f"{SSM_TTC_THRESHOLD_S:g} {SSM_DRAC_THRESHOLD_MPS2:g} {SSM_PET_THRESHOLD_S:g}",
            "device.ssm.range": f"{SSM_RANGE_M:g}",
            "device.ssm.trajectories": "false",
            "device.ssm.file": OUTPUT_FILES["ssm"],
        }
    return sections


# ----------------------------------------------------------------------------- the window


@dataclass(frozen=True)
class Window:
    """cavlab's metric window in steps: `warmup_steps` = T_w / Δt."""

    step_s: float
    warmup_steps: int
    hours: float = math.nan  # the window's length, T − T_w

    @classmethod
    def of(cls, scenario: Scenario) -> Window:
        sim = scenario.simulation
        return cls(sim.step_length_s, round(sim.warmup_s / sim.step_length_s), (sim.duration_s - sim.warmup_s) / 3600)

    def seen_step(self, stamp: str) -> int:
        """The step after which cavlab sees what SUMO stamped at `stamp` (the stamp + Δt), as an index."""
        return round(float(stamp) / self.step_s) + 1

    def trip(self, depart: str) -> bool:
        """First seen at or after the warm-up (cavlab's trip set)."""
        return self.seen_step(depart) >= self.warmup_steps

    def event(self, stamp: str) -> bool:
        """Seen after the warm-up (cavlab's lane changes and other events)."""
        return self.seen_step(stamp) > self.warmup_steps


# ----------------------------------------------------------------------------- the parsers


def sumo_measures(scenario: Scenario, files: dict[str, Path], measured_edges: set[str] | None = None) -> dict:
    """The measures of every SUMO output in `files` (name → file), as one flat JSON-ready mapping
    (NaN where there is no data); call it after SUMO has closed, when the files are complete. On an
    external network, `measured_edges` (the edges of its measurement points) add `arrival_measures`."""
    window = Window.of(scenario)
    measures: dict = {}
    if "tripinfo" in files:
        measures.update(tripinfo_measures(files["tripinfo"], window))
        if measured_edges is not None:
            measures.update(arrival_measures(files["tripinfo"], window, measured_edges))
    if "lanechange" in files:
        cav_types = {name for name, spec in scenario.demand.vehicle_types.items() if spec.kind == "cav"}
        measures.update(lanechange_measures(files["lanechange"], window, cav_types))
    if "ssm" in files:
        measures.update(ssm_measures(files["ssm"], window))
    return measures


def tripinfo_measures(path: Path, window: Window) -> dict:
    """Trips SUMO saw end: those first seen at or after the warm-up that arrived (not removed after a
    collision, `vaporized`), with their mean `duration`, `timeLoss` and `departDelay`."""
    durations, losses, delays = [], [], []
    for node in _records(path, "tripinfo", "tripinfo"):
        if node.get("vaporized") or not window.trip(node.get("depart")):
            continue
        durations.append(float(node.get("duration")))
        losses.append(float(node.get("timeLoss")))
        delays.append(float(node.get("departDelay")))
    return {
        "trips_completed": len(durations),
        "mean_travel_time_s": _mean(durations),
        "mean_time_loss_s": _mean(losses),
        "mean_depart_delay_s": _mean(delays),
    }


def arrival_measures(path: Path, window: Window, edges: set[str]) -> dict:
    """`arrivals_on_measured_edges_vph`: the vehicles that arrived (not `vaporized`) after the warm-up,
    whenever they entered, on one of `edges` (an external network's edges with measurement points; by
    default its exits, where the arrivals are the flow out of the network), per hour."""
    arrivals = 0
    for node in _records(path, "tripinfo", "tripinfo"):
        if not node.get("vaporized") and window.event(node.get("arrival")):
            arrivals += node.get("arrivalLane", "").rpartition("_")[0] in edges
    return {"arrivals_on_measured_edges_vph": arrivals / window.hours}


def lanechange_measures(path: Path, window: Window, cav_types: set[str]) -> dict:
    """Lane changes seen after the warm-up: all, by CAVs (a type in `cav_types`) and HDVs, and by SUMO's
    reason (its first flag: strategic, cooperative, speedGain, keepRight, sublane, traci; anything
    else is `other`); `lane_changes_urgent` counts those SUMO also flagged urgent."""
    counts = dict.fromkeys(["lane_changes", "lane_changes_cav", "lane_changes_hdv"], 0)
    counts.update(dict.fromkeys([f"lane_changes_{k}" for k in (*LANE_CHANGE_REASONS.values(), "other", "urgent")], 0))
    for node in _records(path, "lanechange", "change"):
        if not window.event(node.get("time")):
            continue
        counts["lane_changes"] += 1
        counts["lane_changes_cav" if node.get("type") in cav_types else "lane_changes_hdv"] += 1
        flags = node.get("reason", "").split("|")
        counts[f"lane_changes_{LANE_CHANGE_REASONS.get(flags[0], 'other')}"] += 1
        counts["lane_changes_urgent"] += "urgent" in flags
    return counts


@dataclass
class _Conflict:
    """One encounter of two vehicles, merged from the records of both vehicles' devices."""

    begin: float
    end: float
    ttc: tuple[float, str] | None  # (least TTC, its time stamp)
    drac: tuple[float, str] | None  # (greatest DRAC, its time stamp)
    pet: tuple[float, str] | None  # (PET, its time stamp)

    def merge(self, other: _Conflict) -> None:
        self.end = max(self.end, other.end)
        self.ttc = _extreme(self.ttc, other.ttc, min)
        self.drac = _extreme(self.drac, other.drac, max)
        self.pet = _extreme(self.pet, other.pet, min)


def ssm_measures(path: Path, window: Window) -> dict:
    """The SSM conflicts of all vehicles, each pair's overlapping records merged into one conflict. A
    measure counts when its extreme was seen after the warm-up: `ssm_ttc_conflicts` (least TTC below
    3 s), `ssm_critical_ttc_conflicts` (below 1.5 s), `ssm_drac_conflicts` (DRAC above 3 m/s²),
    `ssm_pet_conflicts` (PET below 2 s), `ssm_conflicts` (any of them); the least TTC, greatest DRAC
    and least PET over the conflicts (NaN when SUMO logged none)."""
    by_pair: dict[frozenset[str], list[_Conflict]] = {}
    for node in _records(path, "ssm", "conflict"):
        record = _Conflict(
            float(node.get("begin")), float(node.get("end")),
            _measure(node, "minTTC"), _measure(node, "maxDRAC"), _measure(node, "PET"),
        )  # fmt: skip
        by_pair.setdefault(frozenset((node.get("ego"), node.get("foe"))), []).append(record)
    conflicts: list[_Conflict] = []
    for records in by_pair.values():
        records.sort(key=lambda c: c.begin)
        merged = [records[0]]
        for c in records[1:]:
            if c.begin <= merged[-1].end:
                merged[-1].merge(c)
            else:
                merged.append(c)
        conflicts += merged

    def seen(m: tuple[float, str] | None) -> float | None:
        return m[0] if m is not None and window.event(m[1]) else None

    ttc = [seen(c.ttc) for c in conflicts]
    drac = [seen(c.drac) for c in conflicts]
    pet = [seen(c.pet) for c in conflicts]
    is_ttc = [v is not None and v < SSM_TTC_THRESHOLD_S for v in ttc]
    is_drac = [v is not None and v > SSM_DRAC_THRESHOLD_MPS2 for v in drac]
    is_pet = [v is not None and v < SSM_PET_THRESHOLD_S for v in pet]
    return {
        "ssm_conflicts": sum(map(any, zip(is_ttc, is_drac, is_pet, strict=True))),
        "ssm_ttc_conflicts": sum(is_ttc),
        "ssm_critical_ttc_conflicts": sum(v is not None and v < CRITICAL_TTC_S for v in ttc),
        "ssm_drac_conflicts": sum(is_drac),
        "ssm_pet_conflicts": sum(is_pet),
        "ssm_min_ttc_s": min((v for v in ttc if v is not None), default=math.nan),
        "ssm_max_drac_mps2": max((v for v in drac if v is not None), default=math.nan),
        "ssm_min_pet_s": min((v for v in pet if v is not None), default=math.nan),
    }


def _measure(conflict: ET.Element, tag: str) -> tuple[float, str] | None:
    """A conflict's extreme of one measure, (value, time stamp); None when SUMO has none ("NA")."""
    node = conflict.find(tag)
    if node is None or node.get("value") in (None, "NA") or node.get("time") in (None, "NA"):
        return None
    return float(node.get("value")), node.get("time")


def _extreme(a: tuple[float, str] | None, b: tuple[float, str] | None, pick) -> tuple[float, str] | None:
    if a is None or b is None:
        return a or b
    return pick(a, b, key=lambda m: m[0])


def _records(path: Path, name: str, tag: str) -> Iterator[ET.Element]:
    """The top-level `tag` elements of a SUMO output, streamed; each is cleared once used."""
    try:
        events = ET.iterparse(path, events=("start", "end"))
        _, root = next(events)
        for event, node in events:
            if event == "end" and node.tag == tag:
                yield node
                root.clear()
    except FileNotFoundError:
        raise SimulationError(f"{path}: SUMO wrote no {name} output (see sumo.log)") from None
    except (ET.ParseError, StopIteration) as exc:
        raise SimulationError(f"{path}: SUMO's {name} output is incomplete ({exc or 'empty file'})") from None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
