"""Scripted reference policies and the episode runner."""

from __future__ import annotations

import pytest
import torch

from tests.world.conftest import place
from townlet.world import NeedsPolicy, RandomPolicy, World, load_level, make_policy, run_episodes, scripted_policies
from townlet.world.policies import DOWN, LEFT, RIGHT, UP


@pytest.mark.parametrize("level", ["L1_full", "L3_temporal_fixed"])
def test_needs_policy_reaches_the_cap(level):
    world = World(level, 100, seed=0)
    policy = NeedsPolicy(world)
    stats = run_episodes(world, lambda obs, w: policy.act(w), 200)
    summary = stats.summary()
    assert summary["episodes"] == 200
    assert summary["cap_rate"] >= 0.95
    assert summary["invalid_rate"] == 0.0


def test_random_policy_lives_about_a_hundred_ticks_and_never_acts_invalidly():
    world = World("L1_full", 200, seed=0)
    policy = RandomPolicy(seed=0)
    stats = run_episodes(world, lambda obs, w: policy.act(w), 400)
    summary = stats.summary()
    assert 85 <= summary["survival_mean"] <= 120
    lo, hi = summary["survival_ci95"]
    assert lo < summary["survival_mean"] < hi
    assert summary["invalid_rate"] == 0.0
    assert summary["causes"]["energy"] + summary["causes"]["health"] == 400
    assert summary["survival_p10"] <= summary["survival_median"]


def test_run_episodes_counts_invalid_actions_and_each_agents_first_episodes():
    world = World("L1_full", 4, seed=0, )
    stats = run_episodes(world, lambda obs, w: torch.zeros(4, dtype=torch.long), 8)  # always UP
    assert stats.lengths.numel() == 8
    assert stats.invalid_rate > 0.9  # stuck against the top wall after a few steps
    seen: list[int] = []
    stats = run_episodes(world, lambda obs, w: torch.full((4,), 4), 5, on_step=lambda info: seen.append(1))
    assert stats.lengths.numel() == 5 and seen


def test_run_episodes_counts_the_uses_of_each_affordance_in_the_counted_episodes():
    """Counted independently here: valid INTERACTs on each affordance during each agent's first episode."""
    world = World("L1_full", 6, seed=0)
    policy = NeedsPolicy(world)
    counted = torch.zeros(world.num_affordances + 1)
    first = torch.ones(6, dtype=torch.bool)

    def act(obs, w):
        actions = policy.act(w)
        used = first & (actions == 4) & w.action_mask()[:, 4]
        counted.index_add_(0, w.affordance_here() + 1, used.float())
        return actions

    def on_step(info):
        first.copy_(first & ~info["done"])

    stats = run_episodes(world, act, 6, on_step=on_step)  # one episode per agent
    uses = stats.summary()["uses_per_episode"]
    names = [a.name for a in world.config.affordances]
    assert list(uses) == names
    assert uses == pytest.approx({n: c / 6 for n, c in zip(names, counted[1:].tolist(), strict=True)})
    assert uses["Bed"] >= 1 and uses["Job"] >= 1  # the needs policy sleeps and works


def test_make_policy_rejects_unknown_names():
    world = World("L0_minimal", 2)
    assert make_policy("needs", world).name == "needs"
    with pytest.raises(ValueError, match="allowed: random, needs, needs-memory, needs-view, needs-explore, needs-sweep, needs-recall"):
        make_policy("oracle", world)
    with pytest.raises(ValueError, match="knowledge"):
        NeedsPolicy(world, knowledge="psychic")  # type: ignore[arg-type]


def test_memory_limited_policies_are_offered_only_on_partial_views():
    assert scripted_policies(load_level("L1_full")) == ("random", "needs")
    assert scripted_policies(load_level("L2_partial")) == (
        "random", "needs", "needs-memory", "needs-view", "needs-explore", "needs-sweep", "needs-recall")
    world = World("L2_partial_fixed", 2)
    assert [make_policy(n, world).name for n in scripted_policies(world.config)][2:] == [
        "needs-memory", "needs-view", "needs-explore", "needs-sweep", "needs-recall"]


# L2_partial_fixed (vision range 2) uses the fixed layout: the Bed is at (1, 1).
TIRED = [0.2, 1, 1, 0.5, 1, 1, 1, 1]  # energy low: the Bed is the target


def test_view_policy_knows_only_what_is_in_its_window_and_memory_keeps_what_it_saw():
    world = World("L2_partial_fixed", 2, seed=0)
    bed = world.affordance_names.index("Bed")
    view, memory = NeedsPolicy(world, knowledge="view"), NeedsPolicy(world, knowledge="memory")
    place(world, [(3, 3), (7, 7)])  # the Bed is 2 cells away for agent 0 (in view), 6 for agent 1
    world.steps = torch.zeros(2, dtype=torch.long)  # the first tick of an episode
    assert view._known(world)[:, bed].tolist() == [True, False]
    assert memory._known(world)[:, bed].tolist() == [True, False]
    place(world, [(6, 6), (7, 7)])  # agent 0 walked away: the Bed is out of view now
    world.steps = torch.ones(2, dtype=torch.long)
    assert view._known(world)[:, bed].tolist() == [False, False]
    assert memory._known(world)[:, bed].tolist() == [True, False]  # remembered
    world.steps = torch.zeros(2, dtype=torch.long)  # a new episode forgets
    assert memory._known(world)[:, bed].tolist() == [False, False]


def test_memory_policy_walks_back_to_a_remembered_bed_and_view_policy_wanders():
    n = 64
    world = World("L2_partial_fixed", n, seed=0)
    memory, view = NeedsPolicy(world, knowledge="memory", seed=1), NeedsPolicy(world, knowledge="view", seed=1)
    place(world, (3, 3), TIRED)
    world.steps = torch.zeros(n, dtype=torch.long)
    memory.act(world), view.act(world)  # both see the Bed from here
    place(world, (6, 3), TIRED)  # 5 cells right of the Bed: out of view
    world.steps = torch.ones(n, dtype=torch.long)
    assert torch.all(memory.act(world) == LEFT)  # straight back towards (1, 1)
    assert bool(memory.purposeful.all())  # heading for a needed place it knows
    wander = view.act(world)
    assert set(wander.tolist()) <= {UP, DOWN, LEFT, RIGHT} and len(set(wander.tolist())) > 1  # random moves
    assert not bool(view.purposeful.any())  # random moves are no purpose an imitator could learn
    assert torch.all(NeedsPolicy(world).act(world) == LEFT)  # full knowledge needs no memory


def test_memory_is_worth_survival_on_a_random_layout():
    """The two differ only in remembering; on L2_partial that is worth well over 1.5x the survival."""
    stats = {}
    for name in ("needs-memory", "needs-view"):
        world = World("L2_partial", 100, seed=0)
        policy = make_policy(name, world, seed=0)
        stats[name] = run_episodes(world, lambda obs, w, p=policy: p.act(w), 100).summary()
        assert stats[name]["invalid_rate"] == 0.0
    assert stats["needs-memory"]["survival_mean"] > 1.5 * stats["needs-view"]["survival_mean"]


RESTED = [1, 1, 1, 1, 1, 1, 1, 1]  # nothing needed, money above the work buffer: no target


def test_explorer_walks_to_the_nearest_cell_it_has_not_seen():
    """From (3, 3) the 5x5 window shows x, y in 1..5; the nearest unseen cells are 3 away, and the first of
    them in x, y order is (0, 3): LEFT. From (2, 3) column 0 is seen too; the nearest unseen is (2, 0): UP."""
    world = World("L2_partial_fixed", 3, seed=0)
    explorer = NeedsPolicy(world, knowledge="explore", seed=0)
    place(world, (3, 3), RESTED)
    world.steps = torch.zeros(3, dtype=torch.long)
    assert explorer.act(world).tolist() == [LEFT] * 3
    assert bool(explorer.purposeful.all())  # a search an imitator can predict from what it saw
    assert int(explorer._seen_cells[0].sum()) == 25
    place(world, (2, 3), RESTED)
    world.steps = torch.ones(3, dtype=torch.long)
    assert explorer.act(world).tolist() == [UP] * 3
    assert int(explorer._seen_cells[0].sum()) == 30  # column 0 for y 1..5 added
    explorer._seen_cells[:] = True  # everything seen: nothing left to search, so a random move
    moves = torch.stack([explorer.act(world) for _ in range(20)])
    assert set(moves.flatten().tolist()) <= {UP, DOWN, LEFT, RIGHT} and len(set(moves.flatten().tolist())) > 1
    assert not bool(explorer.purposeful.any())
    place(world, (3, 3), RESTED)
    world.steps = torch.zeros(3, dtype=torch.long)  # a new episode forgets the cells
    assert explorer.act(world).tolist() == [LEFT] * 3
    assert int(explorer._seen_cells[0].sum()) == 25


def test_explorer_heads_for_a_known_need_before_searching():
    world = World("L2_partial_fixed", 2, seed=0)
    explorer = NeedsPolicy(world, knowledge="explore", seed=0)
    place(world, (3, 3), TIRED)  # the Bed at (1, 1) is in view
    world.steps = torch.zeros(2, dtype=torch.long)
    assert explorer.act(world).tolist() == [LEFT, LEFT]  # x gap first, as the memory policy does
    place(world, (7, 7), TIRED)
    world.steps = torch.zeros(2, dtype=torch.long)  # a new episode far from the Bed: search instead
    assert explorer.act(world).tolist() == [LEFT, LEFT]  # nearest unseen from (7, 7): (4, 7) and (7, 4); x first
    assert bool(explorer.purposeful.all())


def test_searching_finds_the_places_sooner_than_moving_at_random():
    """On L2_partial the explorer lives longer than the memory policy that moves at random when it knows no
    place to go: the two differ only in how they search."""
    stats = {}
    for name in ("needs-memory", "needs-explore"):
        world = World("L2_partial", 100, seed=0)
        policy = make_policy(name, world, seed=0)
        stats[name] = run_episodes(world, lambda obs, w, p=policy: p.act(w), 100).summary()
        assert stats[name]["invalid_rate"] == 0.0
    assert stats["needs-explore"]["survival_mean"] > stats["needs-memory"]["survival_mean"]


MOVES = torch.tensor([[0, -1], [0, 1], [-1, 0], [1, 0]])  # UP, DOWN, LEFT, RIGHT as (dx, dy)


def test_sweep_round_shows_the_whole_town_from_every_start():
    """From every cell of the 8x8 town the round reaches the ring 2 cells in from the edges within 4 moves, then
    goes round it clockwise in 12 moves; the 5x5 window along the ring shows all 64 cells."""
    world = World("L2_partial", 64, seed=0)
    sweep = NeedsPolicy(world, knowledge="sweep")
    pos = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij"), -1).view(64, 2)
    for _ in range(4):
        pos = pos + MOVES[sweep.sweep_move(pos, 8)]
    on_ring = ((pos == 2) | (pos == 5)).any(1) & ((pos >= 2) & (pos <= 5)).all(1)
    assert bool(on_ring.all())
    start, shown = pos.clone(), torch.zeros(64, 8, 8, dtype=torch.bool)
    for k in range(12):
        lo, hi = (pos - 2).clamp(min=0), (pos + 2).clamp(max=7)
        for a in range(64):  # the test's own bookkeeping, not the policy's
            shown[a, lo[a, 1] : hi[a, 1] + 1, lo[a, 0] : hi[a, 0] + 1] = True
        pos = pos + MOVES[sweep.sweep_move(pos, 8)]
        assert k == 11 or not torch.equal(pos, start)
    assert torch.equal(pos, start)  # a cycle of 12 moves
    assert bool(shown.all())


def test_sweep_policy_acts_on_what_it_sees_now_and_lives_to_the_cap():
    """Two agents on the same cell with the same meters act alike whatever they saw before, every step is
    labelled purposeful (the observation shows all it acts on), and on L2_partial it lives about as long as the
    policy that reads the layout: memory is not needed there to find the places."""
    world = World("L2_partial_fixed", 2, seed=0)
    sweep = NeedsPolicy(world, knowledge="sweep")
    place(world, [(1, 1), (7, 7)], RESTED)  # agent 0 saw the Bed at (1, 1), agent 1 did not
    world.steps = torch.zeros(2, dtype=torch.long)
    sweep.act(world)
    place(world, (4, 6), TIRED)  # both tired, the Bed out of view: both keep to the round (y > 5: UP), where
    world.steps = torch.ones(2, dtype=torch.long)  # a policy that remembered the Bed would go LEFT
    assert sweep.act(world).tolist() == [UP, UP] and bool(sweep.purposeful.all())
    place(world, (3, 3), TIRED)  # the Bed in view: straight for it
    assert sweep.act(world).tolist() == [LEFT, LEFT]
    place(world, (4, 4), RESTED)  # nothing needed, inside the ring: up to its top side
    assert sweep.act(world).tolist() == [UP, UP]
    stats = {}
    for name in ("needs-view", "needs-sweep"):
        world = World("L2_partial", 100, seed=0)
        policy = make_policy(name, world, seed=0)
        stats[name] = run_episodes(world, lambda obs, w, p=policy: p.act(w), 100).summary()
        assert stats[name]["invalid_rate"] == 0.0
    assert stats["needs-sweep"]["survival_mean"] > 470 > 2 * stats["needs-view"]["survival_mean"]


def test_recall_walks_back_to_what_it_saw_where_the_sweep_keeps_to_its_round():
    world = World("L2_partial_fixed", 2, seed=0)
    recall, sweep = NeedsPolicy(world, knowledge="recall"), NeedsPolicy(world, knowledge="sweep")
    place(world, [(1, 1), (7, 7)], RESTED)  # agent 0 stands on the Bed at (1, 1), agent 1 far from it
    world.steps = torch.zeros(2, dtype=torch.long)
    recall.act(world), sweep.act(world)
    place(world, (4, 6), TIRED)  # both tired now, the Bed out of view
    world.steps = torch.ones(2, dtype=torch.long)
    assert recall.act(world).tolist() == [LEFT, UP]  # agent 0 remembers the Bed; agent 1 keeps to the round
    assert sweep.act(world).tolist() == [UP, UP]
    assert bool(recall.purposeful.all())  # its recall follows from what it saw, its round from the cell


def test_memory_is_worth_survival_to_a_policy_that_searches_well_on_l2_memory_only():
    """Sweeping with and without memory: on L2_partial the round finds everything soon enough (memory is worth
    little), on L2_memory (3x3 window, walking twice as dear, one place per need) memory is worth well over 1.3x the
    survival."""
    means = {}
    for level in ("L2_partial", "L2_memory"):
        for name in ("needs-sweep", "needs-recall"):
            world = World(level, 100, seed=0)
            policy = make_policy(name, world, seed=0)
            means[level, name] = run_episodes(world, lambda obs, w, p=policy: p.act(w), 100).summary()["survival_mean"]
    assert means["L2_partial", "needs-recall"] < 1.05 * means["L2_partial", "needs-sweep"]
    assert means["L2_memory", "needs-recall"] > 1.4 * means["L2_memory", "needs-sweep"]
