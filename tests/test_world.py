"""`WorldState`'s leader search against a direct O(n²) search, and its cache on the frozen dataclass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cavlab.world import WorldState


def world_of(x, lane, length) -> WorldState:
    n = len(x)
    return WorldState(
        time_s=0.0, ids=np.array([f"v{i}" for i in range(n)], dtype=object), slot=np.arange(n),
        type_index=np.zeros(n, dtype=np.int16), is_cav=np.zeros(n, dtype=bool), controlled=np.zeros(n, dtype=bool),
        edge=np.zeros(n, dtype=np.int16), lane=np.array(lane, dtype=np.int16), x_m=np.array(x, dtype=float),
        speed_mps=np.zeros(n), accel_mps2=np.zeros(n), length_m=np.array(length, dtype=float),
        type_names=("car",), edge_names=("main",),
    )  # fmt: skip


def direct_leaders(world: WorldState, strict: bool) -> np.ndarray:
    """For each row, the same-lane vehicle with the smallest (x, row) among those ahead of it. Ahead:
    (x, row) larger than the row's own (a tie in x: the higher row is ahead), or, `strict`, x larger."""
    out = np.full(len(world), -1, dtype=np.int64)
    for i in range(len(world)):
        ahead = [
            (world.x_m[j], j) for j in range(len(world))
            if j != i and world.lane[j] == world.lane[i]
            and (world.x_m[j] > world.x_m[i] if strict else (world.x_m[j], j) > (world.x_m[i], i))
        ]  # fmt: skip
        if ahead:
            out[i] = min(ahead)[1]
    return out


def random_world(rng: np.random.Generator) -> WorldState:
    n = int(rng.integers(0, 30))
    x = np.round(rng.uniform(0, 200, n) / rng.choice([0.5, 5.0, 25.0]))  # coarse: many ties in x
    return world_of(x, rng.integers(-1, 3, n), rng.choice([4.0, 5.0, 12.0], n))


def check(world: WorldState) -> None:
    for strict, leaders in ((False, world.leader_row), (True, world.leader_ahead_row)):
        np.testing.assert_array_equal(leaders, direct_leaders(world, strict))
        rows = np.flatnonzero(leaders >= 0)
        lead = leaders[rows]
        np.testing.assert_array_equal(world.gap_m(rows, lead), world.x_m[lead] - world.length_m[lead] - world.x_m[rows])


def test_leaders_match_a_direct_search_on_seeded_random_worlds() -> None:
    rng = np.random.default_rng(20240611)
    ties = 0
    for _ in range(300):
        world = random_world(rng)
        check(world)
        ties += int((world.leader_row != world.leader_ahead_row).any())
    assert ties > 50, "the worlds exercise ties in x"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(-1, 2), st.sampled_from([4.0, 5.0, 18.0])), max_size=25))
def test_leaders_match_a_direct_search(vehicles: list[tuple[int, int, float]]) -> None:
    x, lane, length = zip(*vehicles, strict=True) if vehicles else ((), (), ())
    check(world_of(x, lane, length))


def test_ties_in_x() -> None:
    world = world_of(x=[10.0, 10.0, 20.0, 10.0, 5.0], lane=[0, 0, 0, 1, 0], length=[5.0] * 5)
    assert world.leader_row.tolist() == [1, 2, -1, -1, 0]  # row 1 is ahead of row 0 (same x, higher row)
    assert world.leader_ahead_row.tolist() == [2, 2, -1, -1, 0]  # strictly ahead: both behind row 2
    assert world.gap_m(0, 1) == -5.0 and world.gap_m(np.array([4]), np.array([0])).tolist() == [0.0]
    assert world.lane_order.tolist() == [4, 0, 1, 2, 3]


def test_the_cache_lives_on_the_instance_and_not_on_copies() -> None:
    world = world_of(x=[0.0, 10.0, 20.0], lane=[0, 0, 0], length=[5.0] * 3)
    first = world.leader_row
    assert world.leader_row is first and first.tolist() == [1, 2, -1]
    assert "leader_row" in vars(world) and "leader_row" not in [f.name for f in dataclasses.fields(world)]
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        world.x_m = np.zeros(3)  # type: ignore[misc]
    reversed_ = dataclasses.replace(world, x_m=np.array([20.0, 10.0, 0.0]))
    assert "leader_row" not in vars(reversed_)
    assert reversed_.leader_row.tolist() == [-1, 0, 1] and reversed_.leader_ahead_row.tolist() == [-1, 0, 1]
    assert world.leader_row.tolist() == [1, 2, -1] and world.leader_ahead_row.tolist() == [1, 2, -1]


def test_an_empty_world_has_no_leaders() -> None:
    world = world_of(x=[], lane=[], length=[])
    assert world.leader_row.shape == world.leader_ahead_row.shape == world.lane_order.shape == (0,)
