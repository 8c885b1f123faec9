"""The engine's contract: bad input, determinism, auto-reset bookkeeping, masks, compiled = eager."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.world.conftest import make_world, place
from townlet.world import World, load_level

INTERACT = 4


def random_valid(world: World, gen: torch.Generator) -> torch.Tensor:
    mask = world.action_mask()
    return (torch.rand(mask.shape, generator=gen) * mask).argmax(1)


def snapshot(world: World) -> list[torch.Tensor]:
    return [t.clone() for t in (world.positions, world.meters, world.steps, world.hour, world.progress,
                                world.layout_id, world.episode, world.episode_return)]


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (torch.zeros(3, dtype=torch.long), "shape"),
        (torch.zeros(2, 1, dtype=torch.long), "shape"),
        (torch.zeros(2), "int64"),
        (torch.tensor([0, 5]), r"\[0, 4\]"),
        (torch.tensor([-1, 0]), r"\[0, 4\]"),
        ([0, 1], "torch.Tensor"),
    ],
)
def test_bad_actions_raise_and_leave_state_unchanged(actions, message):
    world = make_world("L1_full", n=2)
    before = snapshot(world)
    with pytest.raises(ValueError, match=message):
        world.step(actions)
    for a, b in zip(before, snapshot(world), strict=True):
        assert torch.equal(a, b)


def test_bad_reset_positions_and_difficulty():
    world = make_world("L1_full", n=2)
    with pytest.raises(ValueError, match="on the grid"):
        world.reset(positions=torch.tensor([[0, 0], [8, 0]]))
    with pytest.raises(ValueError, match="int tensor"):
        world.reset(positions=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="depletion"):
        world.set_difficulty(depletion=torch.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        world.set_difficulty(depletion=-1.0)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        world.set_difficulty(reward_mode=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_agents"):
        World("L1_full", 0)


def test_reset_places_agents_where_asked():
    world = make_world("L1_full", n=2)
    obs = world.reset(positions=torch.tensor([[1, 1], [6, 6]]))
    assert world.positions.tolist() == [[1, 1], [6, 6]]
    assert world.affordance_here().tolist() == [world.affordance_names.index(n) for n in ("Bed", "Job")]
    torch.testing.assert_close(obs, world.observe())


@pytest.mark.parametrize("level", ["L1_full", "L2_partial", "L3_temporal"])
def test_same_seed_same_trajectories(level):
    def run(seed: int) -> list[torch.Tensor]:
        world = World(level, 16, seed=seed)
        gen = torch.Generator().manual_seed(7)
        out = [world.observe()]
        for _ in range(120):
            obs, reward, *_ = world.step(random_valid(world, gen))
            out += [obs, reward]
        return out

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_reset_with_seed_restarts_the_streams():
    world = World("L2_partial", 8, seed=0)
    first = world.observe()
    world.reset()
    assert not torch.equal(first, world.observe())  # a new episode, a new layout
    world.reset(seed=0)
    assert torch.equal(first, world.observe())


def test_auto_reset_draws_a_new_layout_for_the_ended_agent_only():
    world = World("L2_partial", 2, seed=0)
    layouts = world.layout_id.clone()
    world.meters = torch.tensor([[0.001, 1, 1, 0.5, 1, 1, 1, 1], [1, 1, 1, 0.5, 1, 1, 1, 1]])
    positions = world.positions.clone()
    obs, _, terminated, _, info = world.step(torch.tensor([INTERACT, INTERACT]))
    assert terminated.tolist() == [True, False]
    assert world.layout_id[0] != layouts[0] and world.layout_id[1] == layouts[1]
    assert world.episode.tolist() == [1, 0]
    assert torch.equal(world.positions[1], positions[1])
    # the final observation shows the old layout, the returned one the new
    assert not torch.equal(info["final_obs"][0], obs[0])
    assert torch.equal(info["final_obs"][1], obs[1])
    assert torch.equal(info["final_mask"][1], world.action_mask()[1])


def test_final_obs_is_lazy_but_always_available():
    world = make_world("L1_full", n=2)
    _, _, _, _, info = world.step(torch.tensor([1, 1]))
    assert "final_obs" in info and "final_obs" not in dict(info)
    assert info["final_obs"].shape == (2, 87)
    assert "final_obs" in dict(info)  # cached after the first access
    with pytest.raises(KeyError):
        info["nope"]


@settings(max_examples=60, deadline=None)
@given(
    level=st.sampled_from(["L1_full", "L3_temporal_fixed", "L0_minimal"]),
    data=st.data(),
)
def test_exactly_the_masked_out_actions_are_noops(level, data):
    """A masked-out action leaves position and use progress alone and changes meters only by the passive
    tick; an allowed action always does something (moves, or advances/completes a use)."""
    n = 6
    world = make_world(level, n=n)
    g = world.grid_size
    xs = data.draw(st.lists(st.integers(0, g - 1), min_size=n, max_size=n))
    ys = data.draw(st.lists(st.integers(0, g - 1), min_size=n, max_size=n))
    meters = data.draw(st.lists(st.lists(st.floats(0.0625, 1.0, width=32), min_size=8, max_size=8), min_size=n,
                                max_size=n))
    hours = data.draw(st.lists(st.integers(0, 23), min_size=n, max_size=n))
    actions = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    place(world, list(zip(xs, ys, strict=True)), meters, hour=hours[0] if world.config.is_temporal else None)
    if world.config.is_temporal:
        world.hour = torch.tensor(hours)

    twin = make_world(level, n=n)  # the same state, stepped with a guaranteed no-op: INTERACT on nothing
    place(twin, list(zip(xs, ys, strict=True)), meters)
    twin.hour, twin.layout_id = world.hour.clone(), world.layout_id.clone()
    empty = (world.affordance_grid()[0] < 0).nonzero()[0]  # some empty cell (y, x)
    twin.positions = torch.tensor([[empty[1], empty[0]]] * n)

    mask = world.action_mask()
    allowed = mask.gather(1, actions.view(-1, 1)).squeeze(1)
    before = world.positions.clone()
    _, _, _, _, info = world.step(actions)
    twin.step(torch.full((n,), INTERACT))
    assert torch.equal(info["invalid"], ~allowed)
    noop = ~allowed
    assert torch.equal(world.positions[noop], before[noop])
    assert torch.equal(world.progress[noop], torch.zeros_like(world.progress[noop]))
    alive = ~info["done"]
    torch.testing.assert_close(world.meters[noop & alive], twin.meters[noop & alive], atol=1e-6, rtol=0)
    moved = allowed & (actions < INTERACT)
    assert (world.positions[moved & alive] != before[moved & alive]).any(dim=1).all()
    used = allowed & (actions == INTERACT) & alive  # every use pays or changes a meter visibly
    assert ((world.meters[used] - twin.meters[used]).abs().amax(dim=1) > 1e-4).all()


def test_compiled_world_matches_eager():
    config = load_level("L3_temporal")
    eager, compiled = World(config, 64, seed=3), World(config, 64, seed=3, compile=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        actions = random_valid(eager, gen)
        a, b = eager.step(actions), compiled.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
        torch.testing.assert_close(a[4]["final_obs"], b[4]["final_obs"], atol=1e-6, rtol=0)
        assert torch.equal(a[4]["cause"], b[4]["cause"])
    torch.testing.assert_close(eager.meters, compiled.meters, atol=1e-6, rtol=0)


def test_state_dict_round_trip_continues_exactly():
    a = World("L3_temporal", 8, seed=4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        a.step(random_valid(a, gen))
    b = World("L3_temporal", 8, seed=9)
    b.load_state_dict(a.state_dict())
    for _ in range(60):
        actions = random_valid(a, gen)
        oa, ra, *_ = a.step(actions)
        ob, rb, *_ = b.step(actions)
        assert torch.equal(oa, ob) and torch.equal(ra, rb)
    bad = a.state_dict()
    bad["meters"] = bad["meters"][:2]
    with pytest.raises(ValueError, match="meters"):
        b.load_state_dict(bad)


def _start_all(world: World) -> None:
    """Begin a new episode for every agent (as an auto-reset would)."""
    world._begin_episodes(torch.ones(world.num_agents, dtype=torch.bool))


def test_random_starts_draw_meters_in_range_from_each_agents_stream():
    n = 4000
    world = World("L2_partial_fixed", n, seed=3)
    start = world._start
    assert torch.all(world.meters == start)  # by default every episode starts as the level says
    world.set_random_starts(1.0)
    _start_all(world)
    m, money = world.meters, world.meter_names.index("money")
    others = [i for i in range(8) if i != money]
    assert torch.all(m[:, others] >= World.RANDOM_START_LOW) and torch.all(m[:, others] <= 1)
    assert torch.all((m[:, money] >= 0) & (m[:, money] <= 1))
    # placed on an affordance of the layout, every one of them about equally often; marked as exploring
    here = world._affordance_id(world.positions, world.layout_id)
    assert torch.all(here >= 0) and torch.all(world.exploring)
    counts = torch.bincount(here, minlength=world.num_affordances).float()
    assert counts.min() > 0.7 * n / world.num_affordances
    # roughly uniform: the mean of U(0.2, 1) is 0.6, of U(0, 1) 0.5; meters are drawn independently
    assert m[:, others].mean().item() == pytest.approx(0.6, abs=0.02)
    assert m[:, money].mean().item() == pytest.approx(0.5, abs=0.02)
    assert abs(torch.corrcoef(m[:, :2].T)[0, 1].item()) < 0.1
    again = World("L2_partial_fixed", n, seed=3)
    again.set_random_starts(1.0)
    _start_all(again)
    assert torch.equal(again.meters, m)  # same seed, same draws
    other_seed = World("L2_partial_fixed", n, seed=4)
    other_seed.set_random_starts(1.0)
    _start_all(other_seed)
    assert not torch.equal(other_seed.meters, m)


def test_random_starts_probability_is_per_agent():
    n = 4000
    world = World("L1_full", n, seed=0)
    world.set_random_starts(torch.cat([torch.full((n // 2,), 0.5), torch.zeros(n // 2)]))
    _start_all(world)
    changed = (world.meters != world._start).any(dim=1)
    assert changed[: n // 2].float().mean().item() == pytest.approx(0.5, abs=0.04)
    assert not changed[n // 2 :].any()
    assert torch.equal(world.exploring, changed)
    for bad, message in [(1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]"), (torch.zeros(3), "shape")]:
        with pytest.raises(ValueError, match=message):
            world.set_random_starts(bad)


def test_random_starts_compiled_matches_eager():
    worlds = [World("L2_partial_fixed", 64, seed=1, compile=c) for c in (False, True)]
    for w in worlds:
        w.set_random_starts(0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):  # several auto-resets per agent
        actions = random_valid(worlds[0], gen)
        (a, *_), (b, *_) = (w.step(actions) for w in worlds)
        assert torch.equal(a, b)
    assert torch.equal(worlds[0].meters, worlds[1].meters)
