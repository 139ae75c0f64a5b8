"""Per-episode randomisation of the warmed traffic and the ego's start (`EnvConfig.randomize`).

Everything is drawn from one generator seeded with the episode's SUMO seed, so `reset(seed=s)`
gives the same perturbation every time and other seeds other ones. It acts on the running
simulation after `AgentTraffic.start` (through backend calls: removals, speed factors, vehicle
types, maximum speeds, lane-change modes, one insertion), so it works the same on a fresh warm-up
and on a restored warm state; it costs a few hundred SUMO calls (0.6 ms measured on the shipped
tasks) and the one SUMO step after it (`TrafficEnv.reset`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cavlab.envs.config import EgoSpec, RandomizeSpec

CLEAR_AHEAD_M = 100.0  # "no leader": the vehicles this far ahead of the ego in its lane are removed
SLOW_AHEAD_M = (30.0, 200.0)  # the slow vehicle of the target lane: the first one this far ahead of the ego
BESIDE_ID = "beside"
BESIDE_ROOM_M = (100.0, 50.0)  # the stretch of target lane cleared for it: this far behind and ahead of its front


@dataclass(frozen=True)
class Perturbation:
    """What `perturb` did, for `info["randomize"]` and the tests."""

    removed: tuple[str, ...]
    inserted: tuple[str, ...]  # the vehicle beside the ego (if SUMO found room for it: `settle`)
    keep_fraction: float
    speed_scale: float
    cav_share: float | None
    gap: tuple[int, float, float] | None  # (lane, from x, to x) of the cleared gap
    leader: str  # slow, none or kept
    leader_speed_mps: float | None
    slow_ahead_mps: float | None  # the speed of the slow vehicle ahead in the target lane, if there is one

    def as_info(self) -> dict:
        return {"removed": len(self.removed), "inserted": len(self.inserted), "keep_fraction": self.keep_fraction,
                "speed_scale": self.speed_scale, "cav_share": self.cav_share,
                "gap": list(self.gap) if self.gap else None, "leader": self.leader,
                "leader_speed_mps": self.leader_speed_mps, "slow_ahead_mps": self.slow_ahead_mps}  # fmt: skip


def episode_rng(sumo_seed: int) -> np.random.Generator:
    """The generator of an episode's perturbation (its own stream of the episode's seed)."""
    return np.random.default_rng([sumo_seed, 2])


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(lo + (hi - lo) * rng.random())


def ego_spec(spec: RandomizeSpec, ego: EgoSpec, rng: np.random.Generator) -> EgoSpec:
    """The ego's placement with its randomised position (and start speed, for an insertion)."""
    update = {"x_m": max(0.0, ego.x_m + uniform(rng, spec.ego_dx_m))}
    if spec.ego_speed_mps is not None:
        update["speed_mps"] = uniform(rng, spec.ego_speed_mps)
    return ego.model_copy(update=update)


def perturb(spec: RandomizeSpec, traffic, ego_id: str, target_lane: int | None,
            rng: np.random.Generator) -> Perturbation:  # fmt: skip
    """Thin, re-speed and re-type the traffic around the placed ego; in the target lane (the ego's or
    none: an adjacent lane drawn at random) clear a gap, put a vehicle beside the ego and slow one
    down farther ahead; make the ego's leader slow, absent or leave it. The world is stale
    afterwards: the caller steps once (then `settle`)."""
    world, backend = traffic.world, traffic.backend
    row = world.index_of(ego_id)
    x0, lane0 = float(world.x_m[row]), int(world.lane[row])
    others = np.flatnonzero(np.arange(len(world)) != row)
    draws = rng.random((4, len(world)))  # one column per row: the draws do not depend on which branch runs

    keep = uniform(rng, spec.keep_fraction)
    removed = set(others[draws[0, others] >= keep].tolist())

    gap = None
    gap_draw, gap_len, gap_off = rng.random(), uniform(rng, spec.gap_length_m), uniform(rng, spec.gap_offset_m)
    lane = target_lane if target_lane is not None and target_lane != lane0 else None
    if lane is None:
        side = [lane0 + d for d in (1, -1) if traffic.frame.lane_min <= lane0 + d <= traffic.frame.lane_max]
        lane = side[int(rng.integers(len(side)))] if side else None
    if lane is not None and gap_draw < spec.gap_probability:
        lo, hi = x0 + gap_off - gap_len / 2, x0 + gap_off + gap_len / 2
        gap = (int(lane), lo, hi)
        body = world.x_m - world.length_m
        removed |= set(others[(world.lane[others] == lane) & (world.x_m[others] >= lo) & (body[others] <= hi)].tolist())

    beside_draw, beside_dx, beside_dv = rng.random(), uniform(rng, spec.beside_dx_m), uniform(rng, spec.beside_dv_mps)
    inserted = []
    if lane is not None and lane >= 0 and beside_draw < spec.beside_probability:
        in_lane = others[world.lane[others] == lane]
        kind_of = world.type_names[int(world.type_index[in_lane[0]])] if len(in_lane) else traffic.agent_type
        x = x0 + beside_dx
        body = world.x_m - world.length_m
        room = (world.x_m[in_lane] >= x - BESIDE_ROOM_M[0]) & (body[in_lane] <= x + BESIDE_ROOM_M[1])
        removed |= set(in_lane[room].tolist())
        ego = traffic.config.ego
        route = traffic._route(ego.from_edge, ego.to_edge) if traffic.network.external is not None else "mainline"
        try:
            backend.add_vehicle(BESIDE_ID, route, kind_of, lane, x, max(0.0, float(world.speed_mps[row]) + beside_dv))
            inserted.append(BESIDE_ID)
        except ValueError:  # no such lane there
            pass

    leader_draw, leader_speed = rng.random(), uniform(rng, spec.slow_leader_speed_mps)
    ahead = others[(world.lane[others] == lane0) & (world.x_m[others] > x0)]
    kind, speed = "kept", None
    slowed: dict[int, float] = {}  # row → maximum speed, set after the type changes
    if leader_draw < spec.no_leader_probability:
        kind = "none"
        removed |= set(ahead[world.x_m[ahead] - x0 <= CLEAR_AHEAD_M].tolist())
    elif leader_draw < spec.no_leader_probability + spec.slow_leader_probability:
        alive = ahead[~np.isin(ahead, list(removed))]
        if len(alive):
            kind, speed = "slow", leader_speed
            slowed[int(alive[np.argmin(world.x_m[alive])])] = leader_speed

    ahead_draw, ahead_speed = rng.random(), uniform(rng, spec.slow_leader_speed_mps)
    slow_ahead = None
    if lane is not None and ahead_draw < spec.slow_ahead_probability:
        dx = world.x_m[others] - x0
        there = others[(world.lane[others] == lane) & (dx >= SLOW_AHEAD_M[0]) & (dx <= SLOW_AHEAD_M[1])]
        there = there[~np.isin(there, list(removed))]
        if len(there):
            slow_ahead = ahead_speed
            slowed[int(there[np.argmin(world.x_m[there])])] = ahead_speed

    scale = uniform(rng, spec.speed_scale)
    share = uniform(rng, spec.cav_share) if spec.cav_share is not None else None
    cav_type, human_type = traffic.scenario.demand.cav_type, _human_type(traffic.scenario)
    names = world.type_names
    for r in others:
        vid = str(world.ids[r])
        if r in removed:
            backend.remove_vehicle(vid)
            continue
        if share is not None and human_type is not None:
            now = names[int(world.type_index[r])]
            if now in (cav_type, human_type):
                new = cav_type if draws[2, r] < share else human_type
                if new != now:
                    backend.set_vehicle_type(vid, new)
        # after the type: a new type redraws the speed factor and resets the maximum speed
        backend.set_speed_factor(vid, scale * (1.0 + spec.speed_spread * (2.0 * draws[1, r] - 1.0)))
    for r, v in slowed.items():
        backend.set_max_speed(str(world.ids[r]), v)
        backend.keep_lane(str(world.ids[r]))
    ids = tuple(sorted(str(world.ids[r]) for r in removed))
    return Perturbation(ids, tuple(inserted), keep, scale, share, gap, kind, speed, slow_ahead)


def settle(traffic, perturbation: Perturbation) -> Perturbation:
    """After the step that follows `perturb`: withdraw the insertions SUMO found no room for; the
    perturbation with the vehicles that entered."""
    entered = {d.vehicle_id for d in traffic.events.departures}
    for vid in perturbation.inserted:
        if vid not in entered:
            traffic.backend.remove_vehicle(vid)
    return dataclasses.replace(perturbation, inserted=tuple(v for v in perturbation.inserted if v in entered))


def _human_type(scenario) -> str | None:
    """The human type a CAV turns into (and back): the most weighted type, of the CAV type's vehicle
    class, of the flows that have CAVs; None if there is none."""
    demand = scenario.demand
    cls = demand.vehicle_types[demand.cav_type].vehicle_class
    weights: dict[str, float] = {}
    for flow in demand.flows:
        share = demand.cav_share if flow.cav_share is None else flow.cav_share
        if share > 0:
            for name, w in flow.vehicle_types.items():
                if demand.vehicle_types[name].vehicle_class == cls:
                    weights[name] = weights.get(name, 0.0) + w
    return max(weights, key=weights.get) if weights else None
