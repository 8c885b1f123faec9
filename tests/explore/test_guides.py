"""Guided agents: the last share of the agents acts by a scripted needs policy, the network's actions for the
others are kept, the guided episodes stay out of the training metrics, and bad settings are refused."""

from __future__ import annotations

import pytest
import torch

from townlet.explore.guides import Guides
from townlet.train import Trainer, load_run_config, parse_overrides
from townlet.train.metrics import read_metrics
from townlet.world import NUM_ACTIONS, ConfigError, World
from townlet.world.policies import NeedsPolicy


def test_guided_agents_take_the_scripted_action_and_the_others_keep_theirs() -> None:
    world = World("L1_full", 10, seed=3)
    guides = Guides(world, 0.3, "needs", seed=0)
    assert guides.count == 3 and guides.guided.tolist() == [False] * 7 + [True] * 3
    assert [guides.is_guided(a) for a in (0, 6, 7, 9)] == [False, False, True, True]
    scripted = NeedsPolicy(world).act(world)
    network = torch.full((10,), 4)
    actions = guides.act(world, network)
    assert torch.equal(actions[7:], scripted[7:]) and torch.equal(actions[:7], network[:7])
    assert torch.equal(guides.advice, scripted)  # what a guide would do, for every agent


def test_without_guided_agents_the_guides_only_advise() -> None:
    world = World("L1_full", 4, seed=3)
    guides = Guides(world, 0.0, "needs", seed=0)
    network = torch.full((4,), 4)
    assert guides.count == 0 and torch.equal(guides.act(world, network), network)
    assert torch.equal(guides.advice, NeedsPolicy(world).act(world))


def test_purposeful_only_advice_leaves_the_random_moves_unlabelled() -> None:
    """On a random layout the memory policy wanders until it has seen what it needs: those steps get the
    no-label advice NUM_ACTIONS, the others its action; the guided agents still act by the policy."""
    world = World("L2_partial", 64, seed=3)
    world.reset()
    guides = Guides(world, 0.5, "needs-memory", seed=0, purposeful_only=True)
    twin = NeedsPolicy(world, knowledge="memory", seed=0)
    labelled = unlabelled = 0
    for _ in range(40):
        chosen = twin.act(world)
        actions = guides.act(world, torch.full((64,), 4))
        purposeful = twin.purposeful
        assert torch.equal(guides.advice, torch.where(purposeful, chosen, NUM_ACTIONS))
        assert torch.equal(actions[32:], chosen[32:]) and bool((actions[:32] == 4).all())
        labelled += int(purposeful.sum())
        unlabelled += int((~purposeful).sum())
        world.step(actions)
    assert labelled > 0 and unlabelled > 0


def test_a_small_share_still_guides_one_agent_and_bad_settings_are_refused() -> None:
    world = World("L2_partial_fixed", 8)
    assert Guides(world, 0.01).count == 1
    with pytest.raises(ValueError, match=r"guides\.fraction: 1\.0 must be in \[0, 1\)"):
        Guides(world, 1.0)
    with pytest.raises(ValueError, match=r"guides\.policy: 'random' is not a needs policy"):
        Guides(world, 0.5, "random")
    with pytest.raises(ConfigError, match=r"guides\.policy: Input should be 'needs', 'needs-memory', 'needs-view', 'needs-explore', 'needs-sweep' or 'needs-recall'"):
        load_run_config("L2_partial_fixed", parse_overrides(["guides.policy=oracle"]))
    with pytest.raises(ConfigError, match=r"guides\.fraction"):
        load_run_config("L2_partial_fixed", parse_overrides(["guides.fraction=1.0"]))


@pytest.mark.parametrize("policy", ["needs-memory", "needs-explore"])
def test_state_dict_restores_the_memory_policy_exactly(policy: str) -> None:
    world = World("L2_partial", 6, seed=1)
    guides = Guides(world, 0.5, policy, seed=2)
    for _ in range(5):
        world.step(guides.act(world, torch.zeros(6, dtype=torch.long)))
    state = {k: v.clone() for k, v in guides.state_dict().items()}
    world_state = world.state_dict()
    ahead = guides.act(world, torch.zeros(6, dtype=torch.long))
    world.step(ahead)
    world.load_state_dict(world_state)
    again = Guides(world, 0.5, policy, seed=99)
    again.load_state_dict(state)
    assert torch.equal(again.policy._seen, state["seen"])
    assert torch.equal(again.policy._seen_cells, state["seen_cells"])
    assert bool(state["seen_cells"].any()) == (policy == "needs-explore")  # only the explorer tracks cells
    assert torch.equal(again.act(world, torch.zeros(6, dtype=torch.long)), ahead)


def test_guided_agents_live_by_the_script_and_their_episodes_stay_out_of_the_metrics(tmp_path) -> None:
    """On L0_minimal the needs policy lives to the cap (500) while near-random agents die within ~150 ticks."""
    config = load_run_config("L0_minimal", {
        "agents": 8, "steps": 8 * 450, "compile_world": False, "guides": {"fraction": 0.25, "policy": "needs"},
        "learner": {"learning_starts": 10**6}, "exploration": {"start": 1.0, "end": 1.0, "decay_steps": 1},
        "logging": {"interval_steps": 800, "tensorboard": False, "save_replay": False},
    })
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    episodes = trainer.world.episode
    assert torch.all(episodes[6:] == 0) and torch.all(episodes[:6] >= 1)  # the guided never died
    rows, _ = read_metrics(tmp_path / "run")
    assert rows and {row["agent"] for row in rows} <= set(range(6))
    # what the guided agents did is what replay holds for them: they feed the learner like any other agent
    script = NeedsPolicy(trainer.world)  # `needs` is deterministic
    for _ in range(20):
        expected = script.act(trainer.world)
        trainer.collect()
        stored = trainer.algorithm.replay._actions[(trainer.algorithm.replay._total - 1) % trainer.algorithm.replay.rows]
        assert torch.equal(stored[6:].long(), expected[6:])
