"""`CooperativeParams`: the parameters of the cooperative and selfish lane-change controllers."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from cavlab.config.scenario import Acceleration, InputModel
from cavlab.controllers.longitudinal import Headway, Limits

Speed = Annotated[float, Field(ge=0, le=70)]
Distance = Annotated[float, Field(ge=0, le=100_000)]
"""At most the longest road [m]."""
Time = Annotated[float, Field(ge=0, le=3600)]
"""At most an hour [s]."""
Weight = Annotated[float, Field(ge=0, le=1e6)]


class CooperativeParams(InputModel):
    """Parameters of the cooperative lane-change controller (scenario `control.params`)."""

    u_min_mps2: Annotated[float, Field(ge=-15, lt=0)] = -4.0
    u_max_mps2: Acceleration = 2.5
    v_min_mps: Speed = Field(0.0, description="Lowest planned speed (0: plans in queues too)")
    v_max_mps: Annotated[Speed, Field(gt=0)] = 35.0
    reaction_time_s: Annotated[float, Field(ge=0, le=10)] = 0.9
    standstill_gap_m: Annotated[float, Field(ge=0, le=50)] = 3.0
    planning_margin_m: Annotated[float, Field(ge=0, le=50)] = Field(1.0, description="Extra gap planned for")
    time_weight: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.5, description="α in ρ = α·max(u²)/(2(1−α)), the weight of time against energy for C"
    )
    terminal_speed_weight: Weight = Field(1.0, description="β of the cooperators' terminal-speed term")
    changer_speed_weight: Annotated[Weight, Field(gt=0)] = Field(10.0, description="β_C of C's terminal-speed term")
    disruption_gamma: Annotated[float, Field(ge=0, le=1)] = Field(0.5, description="Weight of position vs speed")
    disruption_time_s: Annotated[Time, Field(gt=0)] = Field(8.0, description="t_avg normalising the position part")
    max_disruption: Weight = Field(0.05, description="D_th")
    relaxation_factor: Annotated[float, Field(gt=1, le=10)] = Field(1.15, description="λ in T ← λT")
    max_relaxations: Annotated[int, Field(ge=0, le=30)] = 7
    min_maneuver_s: Annotated[Time, Field(gt=0)] = Field(4.0, description="Shortest longitudinal phase")
    max_maneuver_s: Annotated[Time, Field(gt=0)] = Field(20.0, description="Longest longitudinal phase (T_max)")
    search_ahead_m: Annotated[Distance, Field(gt=0)] = Field(
        150.0, description="L_f: slots up to this far ahead of C at T"
    )
    search_behind_m: Annotated[Distance, Field(gt=0)] = Field(
        150.0, description="L_r: slots up to this far behind C at T"
    )
    request_gap_m: Annotated[Distance, Field(gt=0)] = Field(60.0, description="C asks when its gap to U is below this")
    mandatory_range_m: Annotated[Distance, Field(gt=0)] = Field(
        150.0, description="A CAV in a lane that ends (on-ramp, lane drop) asks to leave it this far before the end"
    )
    request_after_m: Distance = Field(
        200.0, description="No requests nearer the road start: vehicles appear there unannounced"
    )
    min_flow_speed_mps: Speed = Field(
        25.0, description="No request into a target lane flowing slower than this (congestion: SUMO's zipper merge)"
    )
    max_target_occupancy: Annotated[float, Field(gt=0, le=10)] = Field(
        0.8, description="No request into a target lane denser than this share of its safe spacing φv + δ + L"
    )
    zipper_zone_m: Distance = Field(
        100.0, description="CAVs this far before a lane's end, in it and in the lane it merges into, keep the safe "
        "gap to the vehicle ahead in either lane (a zipper; 0: none)"
    )
    predict_following: bool = Field(
        True, description="Predict the vehicles SUMO drives braking for a slower leader (SUMO's tau and minGap of "
        "their type); False: every vehicle not in a maneuver is predicted to cruise"
    )
    request_speed_gain_mps: Speed = Field(
        2.0, description="... and the target lane flows at least this much faster than U"
    )
    scan_period_s: Annotated[Time, Field(gt=0)] = Field(0.5, description="How often CAVs are checked for requests")
    request_patience_s: Time = Field(
        3.0, description="A CAV asks only after wanting the lane change this long (LC2013 has the first go)"
    )
    retry_after_s: Annotated[Time, Field(gt=0)] = Field(
        3.0, description="Wait before a refused request is tried again (doubling with each refusal in a row)"
    )
    retry_after_max_s: Annotated[Time, Field(gt=0)] = Field(12.0, description="The longest wait between requests")
    absorbing_followers: Annotated[int, Field(ge=0, le=20)] = Field(
        3, description="Vehicles behind C and the rear cooperator that must absorb their plans (0: not modelled)"
    )
    replan_period_s: Time = Field(
        0.0, description="A running maneuver is planned again from the measured state this often (0: open loop)"
    )
    certify_timeout_s: Time = Field(2.0, description="Wait for a certifiable slot")
    guard_slots: bool = Field(True, description="Hold the CAVs beside a slot being opened in their lanes")
    guard_margin_m: Distance = Field(30.0, description="... from this far behind the slot to this far ahead of it")
    max_solves_per_request: Annotated[int, Field(ge=1, le=10_000)] = Field(
        50, description="QP and NLP solves one request may use; the search ends there with the plans found"
    )

    @model_validator(mode="after")
    def _check(self) -> CooperativeParams:
        if self.v_min_mps >= self.v_max_mps:
            raise ValueError(f"v_min_mps = {self.v_min_mps:g} must be below v_max_mps = {self.v_max_mps:g}")
        if self.min_maneuver_s > self.max_maneuver_s:
            raise ValueError("min_maneuver_s must not exceed max_maneuver_s")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.u_min_mps2, self.u_max_mps2, self.v_min_mps, self.v_max_mps)

    @property
    def headway(self) -> Headway:
        return Headway(self.reaction_time_s, self.standstill_gap_m)

    @property
    def rho(self) -> float:
        """ρ = α·max(u_min², u_max²) / (2(1 − α))."""
        umax2 = max(self.u_min_mps2**2, self.u_max_mps2**2)
        return self.time_weight * umax2 / (2 * (1 - self.time_weight))
