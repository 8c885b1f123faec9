"""Curricula: stage logic (advance, retreat, window, independence), application to the world, state."""

from __future__ import annotations

import io

import pytest
import torch

from townlet.curriculum import DEFAULT_STAGES, AdversarialCurriculum, Curriculum, Stage, StaticCurriculum
from townlet.world import REWARD_MODES, World

ENERGY = 0


def episode(cur: Curriculum, done: list[bool], survived: list[bool], entropy: list[float]) -> torch.Tensor:
    """One `update` call; returns the `changed` mask."""
    return cur.update(torch.tensor(done), torch.tensor(survived), torch.tensor(entropy))


def run(cur: Curriculum, times: int, survived: bool, entropy: float) -> list[bool]:
    """`times` episodes ending for every agent with the same outcome; returns agent 0's `changed` per call."""
    n = cur.num_agents
    return [bool(episode(cur, [True] * n, [survived] * n, [entropy] * n)[0]) for _ in range(times)]


def test_default_stages_go_from_gentle_to_the_real_game() -> None:
    assert [(s.depletion, s.reward_mode) for s in DEFAULT_STAGES] == [
        (0.2, "shaped"),
        (0.4, "shaped"),
        (0.6, "survival"),
        (0.8, "survival"),
        (1.0, "milestone"),
    ]
    with pytest.raises(ValueError):
        Stage(-0.1, "shaped")
    with pytest.raises(ValueError):
        Stage(1.0, "dense")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"min_episodes": 0},
        {"advance_rate": 0.2, "retreat_rate": 0.3},
        {"advance_rate": 1.5},
        {"retreat_rate": -0.1},
        {"entropy_gate": 0.0},
        {"start_stage": 5},
        {"start_stage": -1},
        {"stages": []},
        {"num_agents": 0},
    ],
)
def test_invalid_adversarial_configs(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AdversarialCurriculum(**{"num_agents": 2, **kwargs})  # type: ignore[arg-type]


def test_with_a_gate_advance_needs_both_survival_and_low_entropy() -> None:
    decisive_but_dying = AdversarialCurriculum(1, window=4, min_episodes=4, entropy_gate=0.5)
    for outcome in (True, False, True, False):  # survival 0.5: between retreat (0.3) and advance (0.7)
        episode(decisive_but_dying, [True], [outcome], [0.1])
    surviving_but_random = AdversarialCurriculum(1, window=4, min_episodes=4, entropy_gate=0.5)
    assert run(surviving_but_random, 6, survived=True, entropy=0.9) == [False] * 6
    for cur in (decisive_but_dying, surviving_but_random):
        assert cur.stage.tolist() == [0]
    assert "entropy < 0.5" in surviving_but_random.describe()

    good = AdversarialCurriculum(1, window=4, min_episodes=4, entropy_gate=0.5)
    assert run(good, 4, survived=True, entropy=0.2) == [False, False, False, True]
    assert good.stage.tolist() == [1]


def test_the_default_gate_is_open_even_to_a_uniform_policy() -> None:
    # a value learner's softmax over Q is near uniform; by default survival alone decides
    cur = AdversarialCurriculum(1, window=4, min_episodes=4)
    assert run(cur, 4, survived=True, entropy=1.0) == [False, False, False, True]
    assert cur.stage.tolist() == [1] and "entropy" not in cur.describe()
    assert run(cur, 4, survived=False, entropy=0.0) == [False, False, False, True]  # retreat does not read it
    assert cur.stage.tolist() == [0]


def test_min_episodes_is_respected_even_with_a_full_window() -> None:
    cur = AdversarialCurriculum(1, window=3, min_episodes=10)
    assert run(cur, 10, survived=True, entropy=0.0) == [False] * 9 + [True]
    assert cur.stage.tolist() == [1]


def test_no_advance_past_the_last_stage() -> None:
    cur = AdversarialCurriculum(1, window=2, min_episodes=2, start_stage=4)
    assert run(cur, 10, survived=True, entropy=0.0) == [False] * 10
    assert cur.stage.tolist() == [4]
    assert cur.episodes.tolist() == [10]


def test_retreat_and_not_below_zero() -> None:
    cur = AdversarialCurriculum(1, window=5, min_episodes=3, start_stage=2)
    assert run(cur, 3, survived=False, entropy=0.0) == [False, False, True]
    assert cur.stage.tolist() == [1]
    assert run(cur, 3, survived=False, entropy=0.0) == [False, False, True]
    assert cur.stage.tolist() == [0]
    assert run(cur, 10, survived=False, entropy=0.0) == [False] * 10
    assert cur.stage.tolist() == [0]


def test_the_window_slides_over_the_last_episodes() -> None:
    cur = AdversarialCurriculum(1, window=4, min_episodes=4)
    for outcome in (False, False, False, True):
        episode(cur, [True], [outcome], [0.0])
    assert cur.survival_rate().tolist() == [0.25]
    assert run(cur, 1, survived=True, entropy=0.0) == [False]  # window F F T T: 0.5
    assert cur.survival_rate().tolist() == [0.5]
    assert run(cur, 1, survived=True, entropy=0.0) == [True]  # window F T T T: 0.75 >= 0.7
    assert cur.stage.tolist() == [1]


def test_window_and_count_reset_after_a_stage_change() -> None:
    cur = AdversarialCurriculum(1, window=4, min_episodes=3, start_stage=1)
    run(cur, 3, survived=True, entropy=0.1)
    assert cur.stage.tolist() == [2]
    assert cur.episodes.tolist() == [0]
    assert cur.survived.abs().sum() == 0 and cur.entropy.abs().sum() == 0
    # The good record of stage 1 is gone: three deaths in stage 2 retreat (a window still holding the
    # three survivals would read 0.5 and stay).
    assert run(cur, 3, survived=False, entropy=0.1) == [False, False, True]
    assert cur.stage.tolist() == [1]
    # And a fresh stage needs min_episodes again before any move.
    assert run(cur, 2, survived=True, entropy=0.1) == [False, False]


def test_agents_are_independent() -> None:
    cur = AdversarialCurriculum(4, window=3, min_episodes=3, start_stage=2, entropy_gate=0.5)
    nan = float("nan")
    for _ in range(3):
        changed = episode(
            cur,
            done=[True, True, True, False],
            survived=[True, False, True, True],
            entropy=[0.1, 0.1, 0.9, nan],  # rows where done is False are ignored, even NaN
        )
    assert changed.tolist() == [True, True, False, False]
    assert cur.stage.tolist() == [3, 1, 2, 2]
    assert cur.episodes.tolist() == [0, 0, 3, 0]
    assert not cur.entropy.isnan().any()
    # Agent 0 advancing again leaves every other agent where it is.
    for _ in range(3):
        changed = episode(cur, [True, False, False, False], [True] * 4, [0.0] * 4)
    assert changed.tolist() == [True, False, False, False]
    assert cur.stage.tolist() == [4, 1, 2, 2]


def test_update_returns_bool_on_device_and_checks_shapes() -> None:
    cur = AdversarialCurriculum(3)
    changed = episode(cur, [True, False, True], [True, True, False], [0.5, 0.5, 0.5])
    assert changed.dtype == torch.bool and changed.shape == (3,) and changed.device == cur.device
    with pytest.raises(ValueError):
        episode(cur, [True, False], [True, True], [0.5, 0.5])


def test_apply_sets_each_agents_difficulty(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World("L0_minimal", 3)
    cur = AdversarialCurriculum(3)
    cur.load_state_dict({**cur.state_dict(), "stage": torch.tensor([0, 2, 4])})
    calls = []
    original = world.set_difficulty
    monkeypatch.setattr(world, "set_difficulty", lambda *a, **k: (calls.append(1), original(*a, **k)))
    cur.apply(world)
    assert len(calls) == 1
    assert world.depletion.tolist() == pytest.approx([0.2, 0.6, 1.0])
    assert [REWARD_MODES[i] for i in world.reward_mode.tolist()] == ["shaped", "survival", "milestone"]
    with pytest.raises(ValueError):
        cur.apply(World("L0_minimal", 2))


def test_a_stage_change_changes_the_world_for_that_agent_only() -> None:
    world = World("L1_full", 2)
    cur = AdversarialCurriculum(2, window=1, min_episodes=1)
    cur.apply(world)
    assert world.depletion.tolist() == pytest.approx([0.2, 0.2])
    for _ in range(4):  # agent 1 climbs to the last stage; agent 0 plays no episode
        episode(cur, [False, True], [True, True], [0.0, 0.0])
    assert cur.stage.tolist() == [0, 4]
    cur.apply(world)

    meters = torch.tensor([0.8, 0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.9])  # all above every cascade threshold
    world.positions = torch.tensor([[4, 4], [4, 4]])  # an empty cell: INTERACT is a no-op
    world.meters = meters.expand(2, 8).clone()
    world.steps = torch.tensor([9, 9])  # the coming tick is the 10th: a milestone bonus
    _, reward, terminated, truncated, info = world.step(torch.tensor([4, 4]))
    assert info["invalid"].tolist() == [True, True]
    assert not (terminated | truncated).any()

    drain = world.config.meters["energy"].drain
    drop = meters[ENERGY] - world.meters[:, ENERGY]
    assert drop.tolist() == pytest.approx([0.2 * drain, 1.0 * drain], abs=1e-6)
    rw = world.config.rewards
    after = world.meters[0]
    shaped = rw.survival.per_tick + rw.shaped.weight * min(after[ENERGY].item(), after[6].item())  # 6: health
    assert reward.tolist() == pytest.approx([shaped, rw.milestone.bonus], abs=1e-6)


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_continues_identically() -> None:
    gen = torch.Generator().manual_seed(0)
    inputs = [
        (torch.rand(5, generator=gen) < 0.5, torch.rand(5, generator=gen) < 0.7, torch.rand(5, generator=gen))
        for _ in range(40)
    ]
    a = AdversarialCurriculum(5, window=4, min_episodes=3, entropy_gate=0.6)
    for step in inputs[:20]:
        a.update(*step)
    b = AdversarialCurriculum(5, window=4, min_episodes=3, entropy_gate=0.6)
    b.load_state_dict(_roundtrip(a.state_dict()))
    for step in inputs[20:]:
        assert torch.equal(a.update(*step), b.update(*step))
    for name in ("stage", "episodes", "survived", "entropy"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.stage.sum() > 0  # the sequence moved someone

    with pytest.raises(ValueError):
        AdversarialCurriculum(5, stages=DEFAULT_STAGES[:3]).load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        AdversarialCurriculum(5, window=8).load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        StaticCurriculum(5).load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        b.load_state_dict({**a.state_dict(), "stage": torch.tensor([0, 1, 2, 3, 5])})


def test_static_curriculum_never_changes() -> None:
    world = World("L0_minimal", 3)
    world.set_difficulty(0.5, "shaped")
    cur = StaticCurriculum(3)
    assert cur.num_stages == 1
    cur.apply(world)
    assert world.depletion.tolist() == [1.0, 1.0, 1.0]
    assert world.reward_mode.tolist() == [REWARD_MODES.index("milestone")] * 3
    for outcome in (True, False):
        for _ in range(30):
            changed = episode(cur, [True] * 3, [outcome] * 3, [0.0] * 3)
            assert not changed.any()
    assert cur.stage.tolist() == [0, 0, 0]
    other = StaticCurriculum(3, Stage(0.5, "survival"))
    other.apply(world)
    assert world.depletion.tolist() == [0.5] * 3
    assert "static" in cur.describe()
    restored = StaticCurriculum(3)
    restored.load_state_dict(_roundtrip(cur.state_dict()))
    assert torch.equal(restored.stage, cur.stage)
    with pytest.raises(ValueError):
        restored.load_state_dict(other.state_dict())


def test_describe_counts_agents_per_stage() -> None:
    cur = AdversarialCurriculum(4, start_stage=1)
    assert cur.stage_counts().tolist() == [0, 4, 0, 0, 0]
    text = cur.describe()
    assert "adversarial" in text and "0.4x/shaped: 4" in text
