"""Cooperative lane change with minimal disruption of the target lane.

After Armijos, Li, Cassandras et al. (Automatica 2024); docs/theory.md gives the equations
as implemented. A CAV C stuck behind a slower leader U asks to move into the faster lane, and
a CAV whose lane ends (an on-ramp, a lane drop) into the lane that continues:

1. C's plan: the time-and-energy optimum T* of min ρT + ∫½u² + β_C(v(T) − v_flow)² sets the
   starting duration (closed form |Δv|/√(2ρ), or the free-time NLP when the safe gap to U
   binds); for a duration T, C's plan is the fixed-time optimum of ∫½u² + β_C(v(T) − v_flow)²
   keeping the safe gap to U (as predicted) until the lateral phase ends and, where its lane ends,
   leaving it before the end (closed form, or the QP).
2. Candidate slots: consecutive pairs (front i, rear i+1) of the target lane around C's
   position at T. Cooperating CAVs get fixed-time plans min ∫½u² + β(v(T) − v_flow)² whose end
   state opens the slot through the lateral phase (front ahead of C by L_i + φv_C + δ, rear
   behind by L_C + φv_rear + δ, at T and at T + t_lat);
   a rear CAV that need not move is held to its prediction; the vehicles SUMO drives (HDVs, idle
   CAVs) are predicted with its car following (braking for a slower leader to their type's safe
   gap, `snapshot.CarFollowing`; `predict_following: false`: cruising); slots next to the
   vehicles of another maneuver are skipped.
3. Disruption of the cooperators, D = Σ γ_x(x(T) − x0 − v0T)² + γ_v(v(T) − v0)²; a slot is
   valid when D ≤ D_th; otherwise T ← λT, up to k_max times. The valid slot with the least
   disruption wins.
4. Execution: the plans are tracked step by step (Accelerate), the lane change is issued
   once the slot is certified on the measured state, control is handed back afterwards.
   A request with no valid slot is left to SUMO's own lane changing and retried later.
5. The zipper: near a lane's end the CAVs of the ending lane and of the lane it merges into that no
   maneuver drives keep Krauss' safe speed behind the vehicle ahead in either lane, so the merges
   SUMO makes there find their gaps open.

Modules, one concern each:

- `params`: `CooperativeParams`;
- `snapshot`: `Vehicle`, `Lanes` (the view of the world the planner uses);
- `planner`: `Planner` and what it produces (`LaneChangePlan`, `CooperatorPlan`, `PlanOutcome`),
  `disruption_parts`;
- `maneuver`: `Maneuver` (execution) and `ManeuverRecord`;
- `safety`: `safe_accel`, the filter on every commanded acceleration;
- `zipper`: `Merge`, `merges`, `zipper_caps` (the zipper's speed caps);
- `controller`: the controllers `CooperativeLaneChange` and `SelfishLaneChange`.
"""

from __future__ import annotations

from cavlab.controllers.cooperative.controller import CooperativeLaneChange, SelfishLaneChange
from cavlab.controllers.cooperative.maneuver import Maneuver, ManeuverRecord
from cavlab.controllers.cooperative.params import CooperativeParams
from cavlab.controllers.cooperative.planner import (
    MAX_INTERVALS,
    CooperatorPlan,
    LaneChangePlan,
    Plan,
    Planner,
    PlanOutcome,
    disruption_parts,
)
from cavlab.controllers.cooperative.safety import safe_accel
from cavlab.controllers.cooperative.snapshot import CarFollowing, Lanes, Vehicle

__all__ = [
    "MAX_INTERVALS",
    "CarFollowing",
    "CooperativeLaneChange",
    "CooperativeParams",
    "CooperatorPlan",
    "LaneChangePlan",
    "Lanes",
    "Maneuver",
    "ManeuverRecord",
    "Plan",
    "PlanOutcome",
    "Planner",
    "SelfishLaneChange",
    "Vehicle",
    "disruption_parts",
    "safe_accel",
]
