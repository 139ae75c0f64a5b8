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

import collections
import gzip
import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import numpy as np

from cavlab.config.files import check_regular_file
from cavlab.config.scenario import FlowSpec, NetworkSpec, RoadSpec, Scenario
from cavlab.errors import SimulationError, UserError
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
    internal: bool = False  # a junction's internal edge (external networks)


@dataclass(frozen=True)
class Detector:
    """An E1 induction loop on one lane."""

    id: str
    lane_id: str
    position_m: float  # on the lane
    x_m: float  # global
    lane: int  # road lane index
    edge: str = ""  # the edge's id


@dataclass(frozen=True)
class Network:
    """A built network and the geometry cavlab needs to map SUMO positions to global ones."""

    net_file: Path
    edges: tuple[Edge, ...]
    routes: dict[str, tuple[str, ...]]
    detectors: tuple[Detector, ...]
    external: External | None = None  # the files and graph of an external network (road.kind network)

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
        return self._edge_by_id[edge_id]

    @cached_property
    def _edge_by_id(self) -> dict[str, Edge]:
        return {e.id: e for e in self.edges}

    def lane_ends(self) -> dict[tuple[int, int], float]:
        """(edge index, road lane) → x where that lane stops: an acceleration lane's or a dropped lane's end
        (on an external network: a lane with no connection to the edge that continues its corridor)."""
        if self.external is not None:
            return dict(self.external.lane_ends)
        ends: dict[tuple[int, int], float] = {}
        by_start = {round(e.start_m, 3): e for e in self.edges if e.id != "ramp"}
        for k, e in enumerate(self.edges):
            end = e.start_m + e.length_m
            nxt = by_start.get(round(end, 3))
            for lane in range(e.lane_offset, e.lane_offset + e.lanes):
                if nxt is not None and not nxt.lane_offset <= lane < nxt.lane_offset + nxt.lanes:
                    ends[(k, lane)] = end
        return ends

    def lane_ends_ahead(self, leaving: bool = False) -> dict[tuple[int, int], float]:
        """`_lane_ends_ahead`, computed once per network (the envs' rule driver asks every step)."""
        return self._ends_ahead[leaving]

    @cached_property
    def _ends_ahead(self) -> dict[bool, dict[tuple[int, int], float]]:
        return {leaving: self._lane_ends_ahead(leaving) for leaving in (False, True)}

    def _lane_ends_ahead(self, leaving: bool) -> dict[tuple[int, int], float]:
        """(edge index, road lane) → the x where that lane next stops, on this edge or on a later one of its
        corridor (lanes that run on to the corridor's end are absent): where every vehicle in it must have left
        it. On an external network only lanes without any connection count (an acceleration lane's end, a
        dropped lane); with `leaving`, instead the lanes that lead off the corridor (to an off-ramp), where
        the vehicles SUMO routes on through them leave the corridor (none on a generated road)."""
        stops = self.lane_ends()
        if self.external is None and leaving:
            return {}
        if self.external is not None:
            linked = {(k, i) for k, i, _, _ in self.external.continuations}
            stops = {(k, lane): x for (k, lane), x in stops.items()
                     if ((k, lane - self.edges[k].lane_offset) in linked) == leaving}  # fmt: skip
            corridor = self.external.corridor
            nxt = {k: k + 1 for k in range(len(self.edges) - 1) if corridor[k + 1] == corridor[k]}
        else:
            by_start = {round(e.start_m, 3): k for k, e in enumerate(self.edges) if e.id != "ramp"}
            ends = {k: by_start.get(round(e.start_m + e.length_m, 3)) for k, e in enumerate(self.edges)}
            nxt = {k: j for k, j in ends.items() if j is not None}
        ahead: dict[tuple[int, int], float] = {}
        for k in sorted(range(len(self.edges)), key=lambda k: -self.edges[k].start_m):  # downstream edges first
            e = self.edges[k]
            for lane in range(e.lane_offset, e.lane_offset + e.lanes):
                end = stops.get((k, lane))
                if end is None and k in nxt:
                    end = ahead.get((nxt[k], lane))
                if end is not None:
                    ahead[(k, lane)] = end
        return ahead

    def route_free_flow_time_s(
        self, route: str | tuple[str, ...], speed_factor: float, max_speed_mps: float, start_m: float = 0.0
    ) -> float:
        """Travel time of a route (a name of `routes`, or its edges), from `start_m` on its first edge, at
        the desired speed min(speed_factor · limit, max speed)."""
        edges = [self.edge(e) for e in (self.routes[route] if isinstance(route, str) else route)]
        speeds = [min(speed_factor * e.speed_limit_mps, max_speed_mps) for e in edges]
        return sum(e.length_m / v for e, v in zip(edges, speeds, strict=True)) - start_m / speeds[0]


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
    """The road's network, built with netconvert or taken from the cache; an external network
    (`road.kind` network) is read, or converted from OpenStreetMap, by `external_network`."""
    if road.network is not None:
        return external_network(road.network)
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
    """Run netconvert on the plain XML in a scratch folder and move the result into place atomically."""
    args = [
        "--node-files", "road.nod.xml",
        "--edge-files", "road.edg.xml",
        "--connection-files", "road.con.xml",
        "--output-file", "road.net.xml",
        "--no-internal-links", "true",
        "--no-turnarounds", "true",
        "--offset.disable-normalization", "true",
        "--xml-validation", "never",
    ]  # fmt: skip
    _run_netconvert(args, {f"road.{ext}.xml": text.encode() for ext, text in texts.items()}, target, "road.net.xml")


def _run_netconvert(args: list[str], inputs: dict[str, bytes], target: Path, output: str,
                    error: type[Exception] = SimulationError) -> None:  # fmt: skip
    """netconvert with `args` on `inputs` (file name → bytes) in a scratch folder next to `target`, which
    the folder (with `output` and netconvert.log) replaces atomically; a failure raises `error`."""
    from sumolib import checkBinary

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        for name, data in inputs.items():
            (scratch / name).write_bytes(data)
        done = subprocess.run([checkBinary("netconvert"), *args], cwd=scratch, capture_output=True, text=True,
                              check=False)  # fmt: skip
        (scratch / "netconvert.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            last = " | ".join(done.stderr.strip().splitlines()[-3:])[-500:]
            raise error(f"netconvert failed ({done.returncode}): {last}")
        try:
            os.replace(scratch, target)
        except OSError:  # another process built the same network first
            if not (target / output).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _detectors(road: RoadSpec, edges: list[Edge]) -> list[Detector]:
    found = []
    for k, x in enumerate(road.detector_positions_m):
        edge = next(e for e in edges if e.id != "ramp" and e.start_m <= x < e.start_m + e.length_m)
        for i in range(edge.lanes):
            found.append(
                Detector(f"e1_{k}_{edge.id}_{i}", f"{edge.id}_{i}", x - edge.start_m, x, i + edge.lane_offset, edge.id)
            )
    return found


# ----------------------------------------------------------------------------- external networks

NETWORK_MAX_BYTES = 512 * 1024 * 1024  # a network, route or additional file (SUMO reads them as they are)
CORRIDOR_GAP_M = 2000.0  # x between two corridors: farther than any controller or sensor looks
MAX_STEP_M = 70.0  # the farthest a vehicle moves in one step: 70 m/s (the largest max_speed_mps) for 1 s
EXIT_DETECTOR_BEFORE_END_M = 1.0  # an exit's loops sit this far before its lanes' ends, where vehicles leave
OSM_OPTIONS = (
    "--geometry.remove", "true", "--ramps.guess", "true", "--junctions.join", "true",
    "--tls.guess-signals", "true", "--tls.discard-simple", "true", "--tls.join", "true",
    "--keep-edges.by-vclass", "passenger",
    "--no-turnarounds", "true", "--offset.disable-normalization", "true", "--xml-validation", "never",
)  # fmt: skip
_CAR_CLASSES = {"passenger", "truck", "bus"}  # the vehicle classes of cavlab's types


@dataclass(frozen=True)
class External:
    """What cavlab reads from an external network: its SUMO files, its graph and where controllers plan."""

    net_file: Path
    route_files: tuple[Path, ...]
    additional_files: tuple[Path, ...]
    successors: dict[str, frozenset[str]]  # normal edge → the normal edges a vehicle can drive on to
    lane_ends: dict[tuple[int, int], float]  # (edge index, road lane) → x where the lane stops in its corridor
    control_edges: frozenset[int]  # edge indices where the controller plans for CAVs
    exits: tuple[str, ...]  # normal edges without a successor
    corridor: tuple[int, ...]  # per edge index, its corridor (road lanes and x are continuous within one)
    continuations: frozenset[tuple[int, int, int, int]]  # (edge, SUMO lane, next edge, SUMO lane) a vehicle
    # drives on without a lane change: every connection, directly and through its internal lane


@dataclass
class _NetEdge:
    id: str
    internal: bool
    lane_lengths: list[float]
    speed_mps: float


def resolve_network_path(value: str, base: Path) -> Path:
    """A path of `road.network`: `sumo:<path>` is relative to the installed SUMO's home (SUMO_HOME of the
    eclipse-sumo wheel), any other relative path to `base` (the scenario file's folder)."""
    if value.startswith("sumo:"):
        import sumo

        return Path(sumo.SUMO_HOME) / value.removeprefix("sumo:")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def external_network(spec: NetworkSpec) -> Network:
    """An external network (`road.kind: network`; paths already resolved, `cavlab.sim.resolve`): read
    from its .net.xml, .sumocfg or converted OpenStreetMap file. Every problem with the files is one
    `UserError` naming the file and what is wrong."""
    net_file, route_files, additional_files = _network_files(spec)
    edges_in_file, links, pairs = _read_net(net_file)
    edges, corridor, successors, lane_ends = _corridors(edges_in_file, links)
    by_id = {e.id: k for k, e in enumerate(edges)}
    normal = {e.id: e for e in edges if not e.internal}
    for name in spec.lane_change_edges or []:
        if name not in normal:
            raise UserError(f"road.network.lane_change_edges: unknown edge '{name}' {_known(spec, normal)}")
        if normal[name].lanes < 2:
            raise UserError(
                f"road.network.lane_change_edges: edge '{name}' has 1 lane; a lane-change edge needs 2 or more"
            )
    zone = spec.lane_change_edges if spec.lane_change_edges is not None else [e.id for e in normal.values()]
    control = frozenset(by_id[name] for name in zone if normal[name].lanes >= 2)
    exits = tuple(name for name in normal if not successors.get(name))
    detectors = _external_detectors(spec, edges_in_file, normal, exits)
    continuations = frozenset((by_id[a], i, by_id[b], j) for a, i, b, j in pairs if a in by_id and b in by_id)
    external = External(net_file, route_files, additional_files, successors, lane_ends, control, exits, corridor,
                        continuations)  # fmt: skip
    return Network(net_file=net_file, edges=tuple(edges), routes={}, detectors=tuple(detectors), external=external)


def _network_files(spec: NetworkSpec) -> tuple[Path, tuple[Path, ...], tuple[Path, ...]]:
    """The .net.xml, route and additional files of `spec`: a .sumocfg's input files first, then those the
    scenario lists; an OpenStreetMap file is converted first."""
    path = _checked(Path(spec.file), "road.network.file")
    routes, extra = [], []
    name = path.name.lower()
    if name.endswith(".sumocfg"):
        net, routes, extra = _sumocfg_inputs(path)
    elif name.endswith((".osm", ".osm.xml", ".osm.gz")):
        net = _convert_osm(path)
    else:
        net = path
    routes += [_checked(Path(f), "road.network.route_files") for f in spec.route_files]
    extra += [_checked(Path(f), "road.network.additional_files") for f in spec.additional_files]
    return net, tuple(routes), tuple(extra)


def _checked(path: Path, what: str) -> Path:
    if not os.path.lexists(path):
        raise UserError(f"{what}: {path}: no such file")
    return check_regular_file(path, what, NETWORK_MAX_BYTES)


def _sumocfg_inputs(path: Path) -> tuple[Path, list[Path], list[Path]]:
    """The net, route and additional files a .sumocfg's `input` section names (relative to its folder);
    its other options are cavlab's to set."""
    root = _parse_xml(path, "road.network.file", ("configuration", "sumoConfiguration"))
    values = {node.tag: node.get("value", "") for node in root.iterfind("input/*")}

    def files(option: str) -> list[Path]:
        return [
            _checked(path.parent / f, f"road.network.file: {path}: {option}")
            for f in values.get(option, "").replace(",", " ").split()
        ]

    nets = files("net-file")
    if len(nets) != 1:
        raise UserError(f"road.network.file: {path}: its input section needs one net-file")
    return nets[0], files("route-files"), files("additional-files")


def _parse_xml(path: Path, what: str, roots: tuple[str, ...]) -> ET.Element:
    """A whole (small) XML file, its root checked; gzipped when the name ends in .gz."""
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            root = ET.parse(f).getroot()
    except ET.ParseError as exc:
        raise UserError(f"{what}: {path}: not valid XML ({exc})") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{what}: {path}: cannot be read ({exc})") from None
    if root.tag not in roots:
        raise UserError(f"{what}: {path}: expected a <{roots[0]}> file, got <{root.tag}>")
    return root


def _convert_osm(path: Path) -> Path:
    """An OpenStreetMap file converted by netconvert (OSM_OPTIONS), cached by the hash of its bytes, the
    options, the eclipse-sumo version and the builder version."""
    data = check_regular_file(path, "road.network.file", NETWORK_MAX_BYTES).read_bytes()
    name = "map.osm.gz" if path.name.lower().endswith(".gz") else "map.osm.xml"
    facts = {"osm": hashlib.sha256(data).hexdigest(), "options": OSM_OPTIONS, "sumo": version("eclipse-sumo"),
             "builder": _BUILDER_VERSION}  # fmt: skip
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]
    target = cache_dir() / "networks" / key
    if not (target / "osm.net.xml").is_file():
        args = ["--osm-files", name, *OSM_OPTIONS, "--output-file", "osm.net.xml"]
        _run_netconvert(args, {name: data}, target, "osm.net.xml", error=UserError)
    return target / "osm.net.xml"


def _read_net(
    path: Path,
) -> tuple[list[_NetEdge], dict[tuple[str, str], list[tuple[int, int]]], set[tuple[str, int, str, int]]]:
    """The edges a car can use (file order; pedestrian crossings and walking areas left out) and the lane
    links between them: (from edge, to edge) → [(from lane, to lane)], through internal lanes where the
    network has them; and every connection's lane pairs, (from, lane, to, lane), also from and to its
    internal lane."""
    edges: list[_NetEdge] = []
    raw_links: list[tuple[str, int, str, int]] = []  # through the internal lane where there is one
    pairs: set[tuple[str, int, str, int]] = set()  # ... and past it
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            events = ET.iterparse(f, events=("start", "end"))
            _, root = next(events)
            if root.tag != "net":
                raise UserError(f"road.network.file: {path}: expected a SUMO network (<net>), got <{root.tag}>")
            for event, node in events:
                if event != "end":
                    continue
                if node.tag == "edge":
                    lanes = sorted(node.iterfind("lane"), key=lambda n: int(n.get("index")))
                    if node.get("function") not in ("crossing", "walkingarea") and any(map(_allows_cars, lanes)):
                        edges.append(_NetEdge(node.get("id"), node.get("function") == "internal",
                                              [float(n.get("length")) for n in lanes],
                                              max(float(n.get("speed")) for n in lanes)))  # fmt: skip
                    root.clear()
                elif node.tag == "connection":
                    via = node.get("via")
                    to, to_lane = via.rsplit("_", 1) if via else (node.get("to"), node.get("toLane"))
                    a, i = node.get("from"), int(node.get("fromLane"))
                    raw_links.append((a, i, to, int(to_lane)))
                    pairs.add((a, i, node.get("to"), int(node.get("toLane"))))
                    root.clear()
    except ET.ParseError as exc:
        raise UserError(f"road.network.file: {path}: not valid XML ({exc})") from None
    except (OSError, EOFError, StopIteration, TypeError, ValueError) as exc:
        raise UserError(f"road.network.file: {path}: not a readable SUMO network ({exc or 'empty'})") from None
    if not any(not e.internal for e in edges):
        raise UserError(f"road.network.file: {path}: the network has no edge that cars may use")
    known = {e.id for e in edges}
    links: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for a, i, b, j in raw_links:
        if a in known and b in known:
            links.setdefault((a, b), []).append((i, j))
    short = {(e.id, i) for e in edges for i, length in enumerate(e.lane_lengths) if length < MAX_STEP_M}
    return edges, links, _passed_within_a_step(pairs | set(raw_links), short)


def _passed_within_a_step(
    pairs: set[tuple[str, int, str, int]], short: set[tuple[str, int]]
) -> set[tuple[str, int, str, int]]:
    """The lane pairs, and from every lane each lane reached through `short` lanes only (a vehicle may pass
    a junction's internal lanes, or a short edge, within one step)."""
    succ: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for a, i, b, j in pairs:
        succ.setdefault((a, i), []).append((b, j))
    closed = set()
    for start, nexts in succ.items():
        stack, seen = list(nexts), set()
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                if node in short:
                    stack += succ.get(node, ())
        closed |= {(*start, *node) for node in seen}
    return closed


def _allows_cars(lane: ET.Element) -> bool:
    allow, disallow = lane.get("allow"), lane.get("disallow")
    if allow is not None:
        return bool(_CAR_CLASSES & set(allow.split())) or "all" in allow.split()
    return disallow is None or (disallow != "all" and not set(disallow.split()) >= _CAR_CLASSES)


def _corridors(
    edges: list[_NetEdge], links: dict[tuple[str, str], list[tuple[int, int]]]
) -> tuple[list[Edge], tuple[int, ...], dict[str, frozenset[str]], dict[tuple[int, int], float]]:
    """Lay the network out along x as corridors: an edge continues into the successor most of its lanes
    lead to if that successor is entered mostly from it (a motorway through an on- or off-ramp; on one
    x line, road lanes matched by the links); each corridor starts CORRIDOR_GAP_M after the last one
    ends, and the rest of a junction (ramps, turns) is corridors of its own. Returns the edges (corridor
    by corridor), each edge's corridor, the normal successors of every normal edge, and the lanes that
    stop inside a corridor."""
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for a, b in links:
        succ.setdefault(a, []).append(b)
        pred.setdefault(b, []).append(a)
    width = {ab: len({i for i, _ in pairs}) for ab, pairs in links.items()}  # lanes of a that lead to b
    main_succ = {a: max(bs, key=lambda b: width[(a, b)]) for a, bs in succ.items()}
    main_pred = {b: max(as_, key=lambda a: width[(a, b)]) for b, as_ in pred.items()}
    nxt = {a: b for a, b in main_succ.items() if main_pred[b] == a and b != a}
    continued = set(nxt.values())
    by_id = {e.id: e for e in edges}
    order: list[list[str]] = []
    seen: set[str] = set()
    for head in [e.id for e in edges if e.id not in continued] + [e.id for e in edges]:
        chain = []
        while head not in seen:
            seen.add(head)
            chain.append(head)
            head = nxt.get(head, head)
        if chain:
            order.append(chain)
    laid: list[Edge] = []
    corridor: list[int] = []
    lane_ends: dict[tuple[int, int], float] = {}
    x = 0.0
    for c, chain in enumerate(order):
        offsets = [0]
        for a, b in itertools.pairwise(chain):
            shifts = collections.Counter(i - j for i, j in links[(a, b)])
            offsets.append(offsets[-1] + max(sorted(shifts), key=lambda d: shifts[d]))
        base = min(offsets)
        for k, (name, offset) in enumerate(zip(chain, offsets, strict=True)):
            e = by_id[name]
            length = max(e.lane_lengths)
            laid.append(Edge(name, len(e.lane_lengths), x, length, offset - base, e.speed_mps, e.internal))
            corridor.append(c)
            if k + 1 < len(chain):
                linked = {i for i, _ in links[(name, chain[k + 1])]}
                for i in range(len(e.lane_lengths)):
                    if i not in linked:
                        lane_ends[(len(laid) - 1, i + offset - base)] = x + length
            x += length
        x += CORRIDOR_GAP_M
    return laid, tuple(corridor), _normal_successors(edges, succ), lane_ends


def _normal_successors(edges: list[_NetEdge], succ: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    """Per normal edge, the normal edges reached from it (through any internal lanes)."""
    internal = {e.id for e in edges if e.internal}
    found: dict[str, frozenset[str]] = {}
    for e in edges:
        if e.internal:
            continue
        reached, stack, visited = set(), list(succ.get(e.id, ())), set()
        while stack:
            b = stack.pop()
            if b in visited:
                continue
            visited.add(b)
            if b in internal:
                stack += succ.get(b, ())
            else:
                reached.add(b)
        found[e.id] = frozenset(reached)
    return found


def _external_detectors(
    spec: NetworkSpec, edges: list[_NetEdge], normal: dict[str, Edge], exits: tuple[str, ...]
) -> list[Detector]:
    """The E1 loops of `road.network.detectors`, or, by default, near the end of every exit edge."""
    lengths = {e.id: e.lane_lengths for e in edges}
    points: list[tuple[str, float | None]]
    if spec.detectors is None:
        points = [(name, None) for name in exits]
    else:
        points = [(d.edge, d.position_m) for d in spec.detectors]
    found = []
    for k, (name, pos) in enumerate(points):
        if name not in normal:
            raise UserError(f"road.network.detectors.{k}.edge: unknown edge '{name}' {_known(spec, normal)}")
        edge = normal[name]
        for i, lane_length in enumerate(lengths[name]):
            if pos is None:
                at = lane_length - EXIT_DETECTOR_BEFORE_END_M if spec.detectors is None else max(
                    lane_length - 100.0, lane_length / 2)  # fmt: skip
            elif pos > lane_length:
                raise UserError(
                    f"road.network.detectors.{k}.position_m: {pos:g} m lies beyond the end of edge '{name}' "
                    f"(lane {i} is {lane_length:g} m long)"
                )
            else:
                at = pos
            found.append(Detector(f"e1_{k}_{name}_{i}", f"{name}_{i}", at, edge.start_m + at,
                                  i + edge.lane_offset, name))  # fmt: skip
    return found


def _known(spec: NetworkSpec, normal: dict[str, Edge]) -> str:
    """'in <file> (edges: a, b, ...)': where an edge was looked for, and some that exist."""
    names = sorted(normal)
    more = f", … ({len(names)} in all)" if len(names) > 8 else ""
    return f"in {spec.file} (edges: {', '.join(names[:8])}{more})"


def check_external_demand(scenario: Scenario, network: Network) -> None:
    """The flows' edges exist, their lanes too, and the destination can be reached; the route files name
    only known edges. Raises a `UserError` naming the field or file."""
    external, spec = network.external, scenario.road.network
    assert external is not None and spec is not None
    normal = {e.id: e for e in network.edges if not e.internal}
    if not scenario.demand.flows and not external.route_files:
        raise UserError("demand.flows: needs at least 1 item (a flow) when the network has no route files")
    for i, flow in enumerate(scenario.demand.flows):
        for name in ("from_edge", "to_edge"):
            edge_id = getattr(flow, name)
            if edge_id not in normal:
                raise UserError(f"demand.flows.{i}.{name}: unknown edge '{edge_id}' {_known(spec, normal)}")
        if flow.lane is not None and flow.lane >= normal[flow.from_edge].lanes:
            raise UserError(
                f"demand.flows.{i}.lane: edge '{flow.from_edge}' has lanes 0..{normal[flow.from_edge].lanes - 1}"
            )
        reached, stack = {flow.from_edge}, [flow.from_edge]
        while stack and flow.to_edge not in reached:
            for b in external.successors.get(stack.pop(), ()):
                if b not in reached:
                    reached.add(b)
                    stack.append(b)
        if flow.to_edge not in reached:
            raise UserError(f"demand.flows.{i}: no route from edge '{flow.from_edge}' to edge '{flow.to_edge}'")
    for path in external.route_files:
        root = _parse_xml(path, "road.network.route_files", ("routes",))
        for node in (n for n in root.iter() if n.tag in ("route", "vehicle", "trip", "flow")):
            names = [*(node.get("edges") or "").split(), *(node.get("via") or "").split(),
                     *(node.get(a) for a in ("from", "to") if node.get(a))]  # fmt: skip
            for edge_id in names:
                if edge_id not in normal:
                    raise UserError(f"road.network.route_files: {path}: <{node.tag}> names unknown edge '{edge_id}'")


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


ROUTE_FILES_MIX = "cavlab_route_files_mix"  # the type of every vehicle of an external network's route files


def routes_xml(scenario: Scenario, network: Network) -> str:
    """vTypes, per-flow type distributions (HDV mix + CAV share), routes and flows. On an external network
    the flows go from one edge to another (SUMO routes them) and the types are in `types_xml`."""
    demand, sim = scenario.demand, scenario.simulation
    external = network.external is not None
    lines = ["<routes>"]
    if not external:
        lines += [_vtype_xml(name, spec) for name, spec in demand.vehicle_types.items()]
    for name, edges in network.routes.items():
        lines.append(f'  <route id="{name}" edges="{" ".join(edges)}"/>')
    for i, flow in enumerate(demand.flows):
        rate = flow.vehicles_per_hour * demand.scale
        if rate <= 0:
            continue
        if not external:
            lines.append(_mix_xml(f"mix{i}", flow, demand))
        spacing = f'period="exp({rate / 3600:.9g})"' if flow.arrivals == "poisson" else f'vehsPerHour="{rate:.9g}"'
        lane = "best" if flow.lane is None else flow.lane
        where = (f"from={quoteattr(flow.from_edge)} to={quoteattr(flow.to_edge)}" if external
                 else f'route="{flow.route}"')  # fmt: skip
        lines.append(
            f'  <flow id="f{i}" type="mix{i}" {where} begin="0" end="{sim.duration_s:g}" '
            f'{spacing} departLane="{lane}" departSpeed="{_fmt(flow.depart_speed)}"/>'
        )
    lines.append("</routes>")
    return "\n".join(lines) + "\n"


def types_xml(scenario: Scenario) -> str:
    """An external network's vTypes and type distributions, as an additional file (SUMO reads it whole
    before any route file, so every route file can use them): one per flow, and ROUTE_FILES_MIX (`car`
    with the CAV share `demand.cav_share`) for the vehicles of the network's route files."""
    demand = scenario.demand
    lines = ["<additional>"]
    lines += [_vtype_xml(name, spec) for name, spec in demand.vehicle_types.items()]
    lines += [_mix_xml(f"mix{i}", flow, demand) for i, flow in enumerate(demand.flows)]
    lines.append(_mix_xml(ROUTE_FILES_MIX, FlowSpec(vehicles_per_hour=0), demand))
    lines.append("</additional>")
    return "\n".join(lines) + "\n"


def _mix_xml(name: str, flow: FlowSpec, demand) -> str:
    types, probs = _mix(flow, demand.cav_share if flow.cav_share is None else flow.cav_share, demand.cav_type)
    return (f'  <vTypeDistribution id="{name}" vTypes="{" ".join(types)}" '
            f'probabilities="{" ".join(f"{p:.9g}" for p in probs)}"/>')  # fmt: skip


def route_file_xml(path: Path) -> bytes:
    """A route file of an external network with every vehicle, flow and trip given ROUTE_FILES_MIX as its
    type, and its own vTypes and type distributions left out (cavlab's types drive every vehicle)."""
    root = _parse_xml(path, "road.network.route_files", ("routes",))
    for node in list(root):
        if node.tag in ("vType", "vTypeDistribution"):
            root.remove(node)
        elif node.tag in ("vehicle", "flow", "trip"):
            node.set("type", ROUTE_FILES_MIX)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


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
    """Write routes, detectors and a .sumocfg for `scenario` into `folder`. An external network's files are
    copied in (`road.net.xml[.gz]`, its route files as `routes.<k>.rou.xml` with cavlab's types, its
    additional files as `extra.<k>.<name>`), with cavlab's types in `types.add.xml`."""
    folder.mkdir(parents=True, exist_ok=True)
    net_name = "road.net.xml.gz" if network.net_file.name.endswith(".gz") else "road.net.xml"
    shutil.copyfile(network.net_file, folder / net_name)
    routes, additional = ["routes.rou.xml"], ["detectors.add.xml"]
    (folder / "routes.rou.xml").write_text(routes_xml(scenario, network))
    (folder / "detectors.add.xml").write_text(additional_xml(scenario, network, "detectors.out.xml"))
    if network.external is not None:
        (folder / "types.add.xml").write_text(types_xml(scenario))
        additional.insert(0, "types.add.xml")
        for k, path in enumerate(network.external.route_files):
            routes.append(f"routes.{k}.rou.xml")
            (folder / routes[-1]).write_bytes(route_file_xml(path))
        for k, path in enumerate(network.external.additional_files):
            additional.insert(-1, f"extra.{k}.{path.name}")
            shutil.copyfile(path, folder / additional[-2])
    sim = scenario.simulation
    options = {
        "input": {
            "net-file": net_name,
            "route-files": ",".join(routes),
            "additional-files": ",".join(additional),
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
