"""Building SUMO inputs from a scenario.

The road becomes plain-XML nodes, edges and connections, converted by `netconvert` into a
.net.xml that is cached by the hash of what it was built from. Demand becomes vTypes,
vTypeDistributions and flows; the measurement points become E1 induction loops; a
.sumocfg ties them together with the simulation options.

Layouts (x along the mainline, lanes counted from the right):

    highway    main ─────────────────────────────────────────
    on_ramp    up ──────── merge (lanes + 1) ──── down ─────
                  ramp ───╯  (lane 0 of merge is the acceleration lane and ends)
    lane_drop  up (lanes) ──────────── down (lanes − dropped)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from cavlab.config.scenario import FlowSpec, RoadSpec, Scenario
from cavlab.errors import SimulationError
from cavlab.sim.sumo_outputs import output_files, sumo_output_options

_BUILDER_VERSION = 2  # bump when the network layout code changes
SEGMENT_M = 1000.0  # longest edge: one 20 km edge steps 9× slower than 1 km segments (docs/benchmarks.md)


@dataclass(frozen=True)
class Edge:
    """A mainline or ramp edge."""

    id: str
    lanes: int
    start_m: float  # global x of the edge start
    length_m: float
    lane_offset: int  # road lane = SUMO lane index + lane_offset
    speed_limit_mps: float


@dataclass(frozen=True)
class Detector:
    """An E1 induction loop on one lane."""

    id: str
    lane_id: str
    position_m: float  # on the lane
    x_m: float  # global
    lane: int  # road lane index


@dataclass(frozen=True)
class Network:
    """A built network and the geometry cavlab needs to map SUMO positions to global ones."""

    net_file: Path
    edges: tuple[Edge, ...]
    routes: dict[str, tuple[str, ...]]
    detectors: tuple[Detector, ...]

    @property
    def edge_names(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.edges)

    @property
    def lane_ids(self) -> tuple[str, ...]:
        """Every SUMO lane, edge by edge, in the order the backends read them."""
        return tuple(f"{e.id}_{i}" for e in self.edges for i in range(e.lanes))

    @property
    def lane_edge_index(self) -> np.ndarray:
        return np.array([k for k, e in enumerate(self.edges) for _ in range(e.lanes)], dtype=np.int16)

    @property
    def lane_road_index(self) -> np.ndarray:
        return np.array([i + e.lane_offset for e in self.edges for i in range(e.lanes)], dtype=np.int16)

    @property
    def edge_start_m(self) -> np.ndarray:
        return np.array([e.start_m for e in self.edges])

    @property
    def edge_lane_offset(self) -> np.ndarray:
        return np.array([e.lane_offset for e in self.edges], dtype=np.int16)

    def edge(self, edge_id: str) -> Edge:
        return next(e for e in self.edges if e.id == edge_id)

    def lane_ends(self) -> dict[tuple[int, int], float]:
        """(edge index, road lane) → x where that lane stops: an acceleration lane's or a dropped lane's end."""
        ends: dict[tuple[int, int], float] = {}
        by_start = {round(e.start_m, 3): e for e in self.edges if e.id != "ramp"}
        for k, e in enumerate(self.edges):
            end = e.start_m + e.length_m
            nxt = by_start.get(round(end, 3))
            for lane in range(e.lane_offset, e.lane_offset + e.lanes):
                if nxt is not None and not nxt.lane_offset <= lane < nxt.lane_offset + nxt.lanes:
                    ends[(k, lane)] = end
        return ends

    def road_lane_ends(self) -> dict[int, float]:
        """road lane → the first x where it stops (lanes that run to the road's end are absent)."""
        ends: dict[int, float] = {}
        for (_, lane), x in self.lane_ends().items():
            ends[lane] = min(x, ends.get(lane, x))
        return ends

    def route_free_flow_time_s(self, route: str, speed_factor: float, max_speed_mps: float) -> float:
        """Travel time of a route at the desired speed min(speed_factor · limit, max speed)."""
        return sum(
            e.length_m / min(speed_factor * e.speed_limit_mps, max_speed_mps)
            for e in map(self.edge, self.routes[route])
        )


# ----------------------------------------------------------------------------- layout


Connection = tuple[str, int, str, int]  # from edge, lane, to edge, lane


def _layout(road: RoadSpec) -> tuple[list[Edge], list[Connection], dict[str, tuple[str, ...]]]:
    """Edges, lane connections and routes of a road, long edges split into segments."""
    return _segmented(*_sections(road))


def _sections(road: RoadSpec) -> tuple[list[Edge], list[Connection], dict[str, tuple[str, ...]]]:
    """The road's sections (one edge each, before splitting), their connections and routes."""
    n, v, length = road.lanes, road.speed_limit_mps, road.length_m
    if road.kind == "highway":
        return [Edge("main", n, 0.0, length, 0, v)], [], {"mainline": ("main",)}
    if road.kind == "on_ramp":
        ramp = road.ramp
        assert ramp is not None
        m, a = ramp.merge_position_m, ramp.acceleration_lane_m
        edges = [
            Edge("up", n, 0.0, m, 0, v),
            Edge("merge", n + 1, m, a, -1, v),
            Edge("down", n, m + a, length - m - a, 0, v),
            Edge("ramp", 1, m - ramp.length_m, ramp.length_m, -1, ramp.speed_limit_mps),
        ]
        conns = [("up", i, "merge", i + 1) for i in range(n)]
        conns += [("ramp", 0, "merge", 0)]
        conns += [("merge", i + 1, "down", i) for i in range(n)]
        return edges, conns, {"mainline": ("up", "merge", "down"), "ramp": ("ramp", "merge", "down")}
    drop = road.lane_drop
    assert drop is not None
    k, p = drop.lanes_dropped, drop.position_m
    kept = range(k, n) if drop.side == "right" else range(n - k)
    shift = k if drop.side == "right" else 0
    edges = [Edge("up", n, 0.0, p, 0, v), Edge("down", n - k, p, length - p, shift, v)]
    conns = [("up", i, "down", i - shift) for i in kept]
    return edges, conns, {"mainline": ("up", "down")}


def _segmented(
    edges: list[Edge], conns: list[Connection], routes: dict[str, tuple[str, ...]]
) -> tuple[list[Edge], list[Connection], dict[str, tuple[str, ...]]]:
    """Split mainline sections longer than SEGMENT_M into segments `<id>.<k>` of SEGMENT_M (the last
    one takes the remainder, at least 100 m); the ramp stays whole."""
    pieces: dict[str, list[Edge]] = {}
    for e in edges:
        cuts = [0.0]
        while e.id != "ramp" and e.length_m - cuts[-1] > SEGMENT_M + 100.0:
            cuts.append(cuts[-1] + SEGMENT_M)
        bounds = [*cuts, e.length_m]
        pieces[e.id] = [
            Edge(e.id if len(cuts) == 1 else f"{e.id}.{k}", e.lanes, e.start_m + a, b - a, e.lane_offset,
                 e.speed_limit_mps)
            for k, (a, b) in enumerate(itertools.pairwise(bounds))
        ]  # fmt: skip
    joined = [(pieces[f][-1].id, fl, pieces[t][0].id, tl) for f, fl, t, tl in conns]
    for segments in pieces.values():
        for a, b in itertools.pairwise(segments):
            joined += [(a.id, i, b.id, i) for i in range(a.lanes)]
    return (
        [seg for e in edges for seg in pieces[e.id]],
        joined,
        {name: tuple(seg.id for e in route for seg in pieces[e]) for name, route in routes.items()},
    )


def _plain_xml(road: RoadSpec, edges: list[Edge], conns: list[Connection]) -> dict[str, str]:
    """The .nod.xml, .edg.xml and .con.xml texts."""
    main = [e for e in edges if e.id != "ramp"]
    xs = sorted({round(x, 3) for e in main for x in (e.start_m, e.start_m + e.length_m)})
    node_id = {x: f"n{i}" for i, x in enumerate(xs)}
    node_lines = [f'  <node id="{node_id[x]}" x="{x:.3f}" y="0" type="priority"/>' for x in xs]

    def node_of(x: float) -> str:
        return node_id[round(x, 3)]

    edge_lines = [
        f'  <edge id="{e.id}" from="{node_of(e.start_m)}" to="{node_of(e.start_m + e.length_m)}" '
        f'numLanes="{e.lanes}" speed="{e.speed_limit_mps:g}" width="{road.lane_width_m:g}" spreadType="right"/>'
        for e in main
    ]
    for e in edges:
        if e.id == "ramp":
            # The ramp runs in parallel to the mainline for its last 100 m, its lane exactly where
            # the acceleration lane starts (lanes spread to the right of the edge line), so the
            # junction has no width; its length is set exactly.
            end_x = e.start_m + e.length_m
            side_y = -road.lanes * road.lane_width_m
            straight = min(100.0, e.length_m / 2)
            drop_y = min((e.length_m - straight) / 4, 40.0)
            start = (end_x - straight - math.sqrt((e.length_m - straight) ** 2 - drop_y**2), side_y - drop_y)
            node_lines.append(f'  <node id="ramp_start" x="{start[0]:.3f}" y="{start[1]:.3f}" type="priority"/>')
            shape = f"{start[0]:.3f},{start[1]:.3f} {end_x - straight:.3f},{side_y:.3f} {end_x:.3f},{side_y:.3f}"
            edge_lines.append(
                f'  <edge id="ramp" from="ramp_start" to="{node_of(end_x)}" numLanes="1" shape="{shape}" '
                f'speed="{e.speed_limit_mps:g}" width="{road.lane_width_m:g}" length="{e.length_m:.3f}" '
                f'spreadType="right"/>'
            )
    con_lines = [f'  <connection from="{f}" fromLane="{fl}" to="{t}" toLane="{tl}"/>' for f, fl, t, tl in conns]
    return {
        "nod": "<nodes>\n" + "\n".join(node_lines) + "\n</nodes>\n",
        "edg": "<edges>\n" + "\n".join(edge_lines) + "\n</edges>\n",
        "con": "<connections>\n" + "\n".join(con_lines) + "\n</connections>\n",
    }


def cache_dir() -> Path:
    """Where built networks are kept: $CAVLAB_CACHE_DIR, else ~/.cache/cavlab."""
    return Path(os.environ.get("CAVLAB_CACHE_DIR") or Path.home() / ".cache" / "cavlab")


def build_network(road: RoadSpec) -> Network:
    """The road's network, built with netconvert or taken from the cache."""
    edges, conns, routes = _layout(road)
    texts = _plain_xml(road, edges, conns)
    key = hashlib.sha256(
        json.dumps(
            {"texts": texts, "sumo": version("eclipse-sumo"), "builder": _BUILDER_VERSION}, sort_keys=True
        ).encode()
    ).hexdigest()[:20]
    target = cache_dir() / "networks" / key
    net_file = target / "road.net.xml"
    if not net_file.is_file():
        _netconvert(texts, target)
    detectors = _detectors(road, edges)
    return Network(net_file=net_file, edges=tuple(edges), routes=routes, detectors=tuple(detectors))


def _netconvert(texts: dict[str, str], target: Path) -> None:
    """Run netconvert in a scratch folder and move the result into place atomically."""
    from sumolib import checkBinary

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        for ext, text in texts.items():
            (scratch / f"road.{ext}.xml").write_text(text)
        cmd = [
            checkBinary("netconvert"),
            "--node-files", "road.nod.xml",
            "--edge-files", "road.edg.xml",
            "--connection-files", "road.con.xml",
            "--output-file", "road.net.xml",
            "--no-internal-links", "true",
            "--no-turnarounds", "true",
            "--offset.disable-normalization", "true",
            "--xml-validation", "never",
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, check=False)
        (scratch / "netconvert.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SimulationError(f"netconvert failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        try:
            os.replace(scratch, target)
        except OSError:  # another process built the same network first
            if not (target / "road.net.xml").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _detectors(road: RoadSpec, edges: list[Edge]) -> list[Detector]:
    found = []
    for k, x in enumerate(road.detector_positions_m):
        edge = next(e for e in edges if e.id != "ramp" and e.start_m <= x < e.start_m + e.length_m)
        for i in range(edge.lanes):
            found.append(Detector(f"e1_{k}_{edge.id}_{i}", f"{edge.id}_{i}", x - edge.start_m, x, i + edge.lane_offset))
    return found


# ----------------------------------------------------------------------------- demand and config


def _vtype_xml(name: str, spec) -> str:
    lc = spec.lane_change
    attrs = {
        "id": name,
        "vClass": spec.vehicle_class,
        "length": spec.length_m,
        "minGap": spec.min_gap_m,
        "maxSpeed": spec.max_speed_mps,
        "accel": spec.accel_mps2,
        "decel": spec.decel_mps2,
        "emergencyDecel": spec.emergency_decel_mps2,
        "tau": spec.tau_s,
        "sigma": spec.sigma,
        "speedFactor": f"normc({spec.speed_factor_mean:g},{spec.speed_factor_dev:g},0.2,2)",
        "carFollowModel": spec.car_following,
        "laneChangeModel": "LC2013",
        "lcStrategic": lc.strategic,
        "lcCooperative": lc.cooperative,
        "lcSpeedGain": lc.speed_gain,
        "lcKeepRight": lc.keep_right,
        "lcAssertive": lc.assertive,
        "lcSigma": lc.sigma,
        "color": "0,0.6,1" if spec.kind == "cav" else "1,0.85,0",
    }
    return "  <vType " + " ".join(f"{k}={quoteattr(_fmt(v))}" for k, v in attrs.items()) + "/>"


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def routes_xml(scenario: Scenario, network: Network) -> str:
    """vTypes, per-flow type distributions (HDV mix + CAV share), routes and flows."""
    demand, sim = scenario.demand, scenario.simulation
    lines = ["<routes>"]
    lines += [_vtype_xml(name, spec) for name, spec in demand.vehicle_types.items()]
    for name, edges in network.routes.items():
        lines.append(f'  <route id="{name}" edges="{" ".join(edges)}"/>')
    for i, flow in enumerate(demand.flows):
        rate = flow.vehicles_per_hour * demand.scale
        if rate <= 0:
            continue
        types, probs = _mix(flow, demand.cav_share if flow.cav_share is None else flow.cav_share, demand.cav_type)
        lines.append(
            f'  <vTypeDistribution id="mix{i}" vTypes="{" ".join(types)}" '
            f'probabilities="{" ".join(f"{p:.9g}" for p in probs)}"/>'
        )
        spacing = f'period="exp({rate / 3600:.9g})"' if flow.arrivals == "poisson" else f'vehsPerHour="{rate:.9g}"'
        lane = "best" if flow.lane is None else flow.lane
        lines.append(
            f'  <flow id="f{i}" type="mix{i}" route="{flow.route}" begin="0" end="{sim.duration_s:g}" '
            f'{spacing} departLane="{lane}" departSpeed="{_fmt(flow.depart_speed)}"/>'
        )
    lines.append("</routes>")
    return "\n".join(lines) + "\n"


def _mix(flow: FlowSpec, cav_share: float, cav_type: str) -> tuple[list[str], list[float]]:
    total = sum(flow.vehicle_types.values())
    types = [name for name in flow.vehicle_types]
    probs = [(1 - cav_share) * w / total for w in flow.vehicle_types.values()]
    if cav_share > 0:
        types.append(cav_type)
        probs.append(cav_share)
    keep = [(t, p) for t, p in zip(types, probs, strict=True) if p > 0]
    return [t for t, _ in keep], [p for _, p in keep]


def detector_period_s(scenario: Scenario) -> float:
    """The E1 aggregation period: `outputs.detector_period_s`, else the largest divisor of warm-up and
    duration up to 60 s (SUMO writes no partial interval: a run's metrics need its end on a boundary)."""
    if scenario.outputs.detector_period_s is not None:
        return scenario.outputs.detector_period_s
    step = scenario.simulation.step_length_s
    n = [round(scenario.simulation.warmup_s / step), round(scenario.simulation.duration_s / step)]
    k = math.gcd(*n) if n[0] else n[1]
    cap = round(60 / step)
    best = max(d for d in range(1, min(k, cap) + 1) if k % d == 0)
    return best * step


def additional_xml(scenario: Scenario, network: Network, detector_file: str) -> str:
    """The E1 induction loops."""
    period = detector_period_s(scenario)
    lines = ["<additional>"]
    for d in network.detectors:
        lines.append(
            f'  <inductionLoop id="{d.id}" lane="{d.lane_id}" pos="{d.position_m:.3f}" '
            f'period="{period:g}" file="{detector_file}"/>'
        )
    lines.append("</additional>")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SumoInputs:
    """Files of one run, in `folder`; `sumo_outputs` are the files of SUMO's own outputs that
    `outputs.sumo` switches on (name → file: `tripinfo`, `lanechange`, `ssm`)."""

    folder: Path
    config: Path
    log: Path
    detector_output: Path
    sumo_outputs: dict[str, Path] = field(default_factory=dict)


def write_sumo_inputs(scenario: Scenario, network: Network, folder: Path) -> SumoInputs:
    """Write routes, detectors and a .sumocfg for `scenario` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(network.net_file, folder / "road.net.xml")
    (folder / "routes.rou.xml").write_text(routes_xml(scenario, network))
    (folder / "detectors.add.xml").write_text(additional_xml(scenario, network, "detectors.out.xml"))
    sim = scenario.simulation
    options = {
        "input": {
            "net-file": "road.net.xml",
            "route-files": "routes.rou.xml",
            "additional-files": "detectors.add.xml",
        },
        "time": {"begin": "0", "end": f"{sim.duration_s:g}", "step-length": f"{sim.step_length_s:g}"},
        "processing": {
            "step-method.ballistic": "true",
            "lanechange.duration": f"{sim.lane_change_duration_s:g}",
            "time-to-teleport": "-1",
            "collision.action": sim.collision_action,
            "collision.mingap-factor": "0",
            "collision.check-junctions": "true",
        },
        **sumo_output_options(scenario),
        "random_number": {"seed": str(sim.seed)},
        "report": {
            "log": "sumo.log",
            "no-step-log": "true",
            "duration-log.disable": "true",
            "xml-validation": "never",
        },
    }
    xml = ["<configuration>"]
    for section, values in options.items():
        xml.append(f"  <{section}>")
        xml += [f"    <{k} value={quoteattr(v)}/>" for k, v in values.items()]
        xml.append(f"  </{section}>")
    xml.append("</configuration>")
    config = folder / "run.sumocfg"
    config.write_text("\n".join(xml) + "\n")
    return SumoInputs(folder, config, folder / "sumo.log", folder / "detectors.out.xml", output_files(scenario, folder))
