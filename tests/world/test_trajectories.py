"""The engine still plays the trajectories it played before it was made faster (see `trajectory_record`)."""

from __future__ import annotations

import json

import pytest

from tests.world.trajectory_record import AGENTS, FIXTURE, STEPS, _scenario_worlds, play

REFERENCE = json.loads(FIXTURE.read_text())
NAMES = list(REFERENCE["scenarios"])


def test_the_fixture_matches_the_recorder():
    assert (REFERENCE["steps"], REFERENCE["agents"]) == (STEPS, AGENTS)
    assert list(_scenario_worlds()) == NAMES
    for rows in REFERENCE["scenarios"].values():
        assert any(row[3] != 0 for row in rows)  # every scenario ends episodes (resets are covered)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_trajectory_equals_the_reference(name):
    world = _scenario_worlds()[name]
    rows = play(world, seed=NAMES.index(name))
    for step, (got, want) in enumerate(zip(rows, REFERENCE["scenarios"][name], strict=True)):
        assert got[0] == want[0], f"{name} step {step}: discrete state differs (positions, dones, causes, masks...)"
        assert got[1:] == pytest.approx(want[1:], abs=2e-5, rel=1e-7), f"{name} step {step}: float sums differ"
