"""TransitionReplay against hand-constructed streams with known n-step returns and episode ends."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from townlet.replay import TransitionBatch, TransitionReplay

A = 5


def fill(buf: TransitionReplay, stream, device: str = "cpu", upto: int | None = None) -> None:
    for t in range(len(stream.steps) if upto is None else upto):
        buf.add(**{k: v.to(device) for k, v in stream.transition_args(t).items()},
                intrinsic=stream.steps[t]["intrinsic"].to(device))


def global_step(buf: TransitionReplay, index: int, total: int) -> tuple[int, int]:
    """(global step, env) of a flat storage index, given `total` steps added."""
    row, env = divmod(index, buf.num_envs)
    oldest = max(0, total - buf.rows)
    return oldest + (row - oldest) % buf.rows, env


def expected(stream, g: int, env: int, n: int, gamma: float) -> dict:
    """Brute-force n-step transition from the raw stream."""
    ret, intrinsic, k = 0.0, 0.0, 0
    for i in range(n):
        s = stream.steps[g + i]
        ret += gamma**i * float(s["rewards"][env])
        intrinsic += gamma**i * float(s["intrinsic"][env])
        k = i + 1
        if s["terminated"][env] or s["truncated"][env]:
            break
    last = stream.steps[g + k - 1]
    term = bool(last["terminated"][env])
    return {
        "obs": stream.steps[g]["obs"][env],
        "action": int(stream.steps[g]["actions"][env]),
        "reward": ret,
        "intrinsic": intrinsic,
        "steps": k,
        "next_obs": last["next_obs"][env],
        "next_mask": last["next_mask"][env],
        "terminated": term,
        "truncated": bool(last["truncated"][env]) and not term,
    }


def by_index(batch: TransitionBatch) -> dict[int, int]:
    """First batch position of each sampled storage index."""
    pos: dict[int, int] = {}
    for i, idx in enumerate(batch.indices.tolist()):
        pos.setdefault(idx, i)
    return pos


def check_all(buf: TransitionReplay, stream, total: int, n: int, gamma: float, draws: int = 2048) -> set:
    """Sample widely; every sampled entry must equal the brute-force reference. Returns sampled (g, env)."""
    batch = buf.sample(draws, torch.Generator(device=buf.device).manual_seed(0))
    assert batch.obs.dtype == torch.float32 and batch.actions.dtype == torch.int64
    assert batch.steps.dtype == torch.int64 and batch.next_mask.dtype == torch.bool
    assert batch.intrinsic.dtype == torch.float32 and batch.intrinsic.shape == (draws,)
    assert torch.equal(batch.weights, torch.ones(draws, device=buf.device))
    seen = set()
    for idx, i in by_index(batch).items():
        g, env = global_step(buf, idx, total)
        seen.add((g, env))
        exp = expected(stream, g, env, n, gamma)
        assert torch.equal(batch.obs[i].cpu(), exp["obs"]), (g, env)
        assert int(batch.actions[i]) == exp["action"]
        assert float(batch.rewards[i]) == pytest.approx(exp["reward"], rel=1e-6), (g, env)
        assert float(batch.intrinsic[i]) == pytest.approx(exp["intrinsic"], rel=1e-6), (g, env)
        assert int(batch.steps[i]) == exp["steps"], (g, env)
        assert torch.equal(batch.next_obs[i].cpu(), exp["next_obs"]), (g, env)
        assert torch.equal(batch.next_mask[i].cpu(), exp["next_mask"]), (g, env)
        assert bool(batch.terminated[i]) == exp["terminated"], (g, env)
        assert bool(batch.truncated[i]) == exp["truncated"], (g, env)
    return seen


def test_one_step_batch_is_the_stored_transition(stream_factory, device) -> None:
    stream = stream_factory(6, 3, 7, terminated={(2, 1)}, truncated={(4, 0)})
    buf = TransitionReplay(30, 3, 7, n_step=1, device=device)
    fill(buf, stream, device)
    assert len(buf) == 18
    seen = check_all(buf, stream, 6, 1, 0.99)
    assert seen == {(g, e) for g in range(6) for e in range(3)}


def test_n_step_returns_stop_at_terminated_and_truncated(stream_factory) -> None:
    # env 0 dies at step 2, env 1 is truncated at step 3; rewards are t + 1 (env 0) and t + 101 (env 1)
    stream = stream_factory(8, 2, 6, terminated={(2, 0)}, truncated={(3, 1)})
    buf = TransitionReplay(100, 2, 6, n_step=3, gamma=0.5)
    fill(buf, stream)
    assert len(buf) == 12  # steps 0..5 have complete windows; 6 and 7 wait for their look-ahead
    batch = buf.sample(1000, torch.Generator().manual_seed(1))
    pos = by_index(batch)
    final, obs = stream.steps, stream.steps
    hand = {
        # (step, env): (reward, steps, terminated, truncated, next obs)
        (0, 0): (1 + 0.5 * 2 + 0.25 * 3, 3, True, False, final[2]["final_obs"][0]),
        (1, 0): (2 + 0.5 * 3, 2, True, False, final[2]["final_obs"][0]),
        (2, 0): (3.0, 1, True, False, final[2]["final_obs"][0]),
        (3, 0): (4 + 0.5 * 5 + 0.25 * 6, 3, False, False, obs[6]["obs"][0]),
        (1, 1): (102 + 0.5 * 103 + 0.25 * 104, 3, False, True, final[3]["final_obs"][1]),
        (2, 1): (103 + 0.5 * 104, 2, False, True, final[3]["final_obs"][1]),
        (3, 1): (104.0, 1, False, True, final[3]["final_obs"][1]),
        (4, 1): (105 + 0.5 * 106 + 0.25 * 107, 3, False, False, obs[7]["obs"][1]),
    }
    assert {divmod(i, 2) for i in pos} == {(g, e) for g in range(6) for e in range(2)}
    for (g, env), (ret, k, term, trunc, nxt) in hand.items():
        i = pos[g * 2 + env]
        assert float(batch.rewards[i]) == pytest.approx(ret)
        assert int(batch.steps[i]) == k
        assert bool(batch.terminated[i]) is term and bool(batch.truncated[i]) is trunc
        assert torch.equal(batch.next_obs[i], nxt)
        assert torch.equal(batch.obs[i], stream.steps[g]["obs"][env])
    final_mask = stream.steps[3]["final_mask"][1]
    assert torch.equal(batch.next_mask[pos[2 * 2 + 1]], final_mask)
    check_all(buf, stream, 8, 3, 0.5)


def test_only_complete_windows_are_sampleable(stream_factory) -> None:
    stream = stream_factory(4, 2, 3, terminated={(0, 0)})
    buf = TransitionReplay(40, 2, 3, n_step=3)
    assert len(buf) == 0
    with pytest.raises(ValueError, match="nothing is sampleable"):
        buf.sample(4)
    lengths = []
    for t in range(4):
        fill_one = stream.transition_args(t)
        buf.add(**fill_one, intrinsic=stream.steps[t]["intrinsic"])
        lengths.append(len(buf))
    assert lengths == [0, 0, 2, 4]
    # step 0's window (ended at once for env 0) still waits with its row; only rows 0 and 1 are sampled
    seen = check_all(buf, stream, 4, 3, 0.99, draws=256)
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_ring_wraps_and_keeps_only_the_newest_rows(stream_factory) -> None:
    stream = stream_factory(13, 2, 4, terminated={(9, 0), (11, 1)}, truncated={(10, 1)})
    buf = TransitionReplay(11, 2, 4, n_step=2, gamma=0.9)  # rounds down to 5 rows
    assert buf.capacity == 10 and buf.rows == 5
    fill(buf, stream)
    assert len(buf) == 8
    seen = check_all(buf, stream, 13, 2, 0.9)
    # rows hold steps 8..12; step 12 waits for its second step
    assert seen == {(g, e) for g in range(8, 12) for e in range(2)}


def test_terminated_and_truncated_at_once_counts_as_terminated(stream_factory) -> None:
    stream = stream_factory(3, 1, 2, terminated={(1, 0)}, truncated={(1, 0)})
    buf = TransitionReplay(10, 1, 2, n_step=2)
    fill(buf, stream)
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    first = batch.indices == 0
    assert first.any()
    assert batch.terminated[first].all() and not batch.truncated[first].any()
    assert (batch.steps[first] == 2).all()


def test_compact_storage_round_trips_exactly(stream_factory, l2_layout, device) -> None:
    stream = stream_factory(5, 3, l2_layout, terminated={(1, 2)}, truncated={(3, 0)})
    # make the float fields awkward: tiny, huge and negative values must survive bit-exactly
    for s in stream.steps:
        for key in ("obs", "next_obs"):
            for f in l2_layout.fields:
                if not f.discrete:
                    s[key][:, f.slice] *= torch.tensor([1e-30, -3.3e30, 1.0]).unsqueeze(1)
    buf = TransitionReplay(15, 3, l2_layout, device=device)
    fill(buf, stream, device)
    seen = check_all(buf, stream, 5, 1, 0.99)
    assert len(seen) == 15
    discrete = sum(f.size for f in l2_layout.fields if f.discrete)
    per_obs = discrete + 4 * (l2_layout.dim - discrete)
    assert per_obs < 2 * l2_layout.dim  # the window is stored as int8
    expected_bytes = 5 * 3 * (2 * per_obs + A + 1 + 4 + 4 + 1 + 1) + 8 + 4  # reward, intrinsic
    assert buf.nbytes == expected_bytes


def test_nbytes_is_the_sum_of_the_preallocated_tensors() -> None:
    buf = TransitionReplay(64, 4, 10, num_actions=300, n_step=3)
    rows = 16
    per_row = 4 * (2 * 10 * 4 + 300 + 2 + 4 + 4 + 1 + 1)  # float32 obs x2, mask, int16 action, 2 rewards, flags
    assert buf.nbytes == rows * per_row + 3 * 8 + 3 * 4


def test_seeded_sampling_is_reproducible(stream_factory) -> None:
    stream = stream_factory(10, 3, 5, terminated={(4, 1)})
    buf = TransitionReplay(60, 3, 5, n_step=2)
    fill(buf, stream)
    a = buf.sample(32, torch.Generator().manual_seed(7))
    b = buf.sample(32, torch.Generator().manual_seed(7))
    c = buf.sample(32, torch.Generator().manual_seed(8))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(a.next_obs, b.next_obs)
    assert not torch.equal(a.indices, c.indices)


def _bad_args(name: str, value):
    good = {
        "obs": torch.zeros(2, 3),
        "mask": torch.ones(2, A, dtype=torch.bool),
        "actions": torch.zeros(2, dtype=torch.int64),
        "rewards": torch.zeros(2),
        "next_obs": torch.zeros(2, 3),
        "next_mask": torch.ones(2, A, dtype=torch.bool),
        "terminated": torch.zeros(2, dtype=torch.bool),
        "truncated": torch.zeros(2, dtype=torch.bool),
    }
    return {**good, name: value}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("obs", torch.zeros(2, 4), r"obs: expected a float tensor of shape \[2, 3\], got shape \[2, 4\]"),
        ("obs", torch.zeros(3, 3), "obs: .*shape"),
        ("obs", torch.zeros(2, 3, dtype=torch.int64), "obs: .*dtype"),
        ("obs", [[0.0] * 3] * 2, "obs: .*got list"),
        ("mask", torch.ones(2, 4, dtype=torch.bool), r"mask: .*\[2, 5\]"),
        ("mask", torch.ones(2, A), "mask: .*dtype"),
        ("actions", torch.zeros(2), "actions: .*dtype"),
        ("actions", torch.zeros(2, dtype=torch.bool), "actions: .*dtype"),
        ("actions", torch.zeros(2, 1, dtype=torch.int64), "actions: .*shape"),
        ("rewards", torch.zeros(3), "rewards: .*shape"),
        ("next_obs", torch.zeros(2, 2), "next_obs: .*shape"),
        ("next_mask", torch.ones(2, A, dtype=torch.uint8), "next_mask: .*dtype"),
        ("terminated", torch.zeros(2, dtype=torch.uint8), "terminated: .*dtype"),
        ("truncated", torch.zeros(1, dtype=torch.bool), "truncated: .*shape"),
    ],
)
def test_add_rejects_bad_shapes_and_dtypes(name: str, value, message: str) -> None:
    buf = TransitionReplay(10, 2, 3)
    with pytest.raises(ValueError, match=message):
        buf.add(**_bad_args(name, value))
    assert len(buf) == 0
    buf.add(**_bad_args("obs", torch.zeros(2, 3)))
    assert len(buf) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 3}, "capacity"),
        ({"num_envs": 0}, "num_envs"),
        ({"n_step": 0}, "n_step"),
        ({"num_actions": 0}, "num_actions"),
        ({"gamma": 1.5}, "gamma"),
        ({"obs": 0}, "obs"),
        ({"obs": True}, "obs"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"capacity": 8, "num_envs": 2, "obs": 3, "n_step": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        TransitionReplay(args.pop("capacity"), args.pop("num_envs"), args.pop("obs"), **args)


def test_sample_rejects_bad_batch_size(stream_factory) -> None:
    buf = TransitionReplay(10, 1, 2)
    fill(buf, stream_factory(2, 1, 2))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            buf.sample(bad)


@settings(max_examples=40, deadline=None)
@given(
    num_envs=st.integers(1, 3),
    n_step=st.integers(1, 4),
    extra_rows=st.integers(0, 5),
    length=st.integers(0, 20),
    gamma=st.sampled_from([0.0, 0.5, 0.99, 1.0]),
    ends=st.sets(st.tuples(st.integers(0, 19), st.integers(0, 2), st.booleans()), max_size=15),
)
def test_matches_brute_force_on_random_streams(
    stream_factory, num_envs, n_step, extra_rows, length, gamma, ends
) -> None:
    term = {(t, e) for t, e, is_term in ends if is_term and e < num_envs}
    trunc = {(t, e) for t, e, is_term in ends if not is_term and e < num_envs}
    stream = stream_factory(length, num_envs, 3, terminated=term, truncated=trunc)
    rows = n_step + extra_rows
    buf = TransitionReplay(rows * num_envs, num_envs, 3, n_step=n_step, gamma=gamma)
    fill(buf, stream)
    expect_rows = max(0, min(length, rows) - n_step + 1)
    assert len(buf) == expect_rows * num_envs
    if expect_rows:
        seen = check_all(buf, stream, length, n_step, gamma, draws=512)
        first = max(0, length - rows)
        assert seen == {(g, e) for g in range(first, first + expect_rows) for e in range(num_envs)}


def test_state_dict_round_trip_restores_contents_and_counters():
    a = TransitionReplay(64, 2, 3, n_step=2)
    b = TransitionReplay(64, 2, 3, n_step=2)
    for t in range(10):
        obs = torch.full((2, 3), float(t))
        a.add(obs, torch.ones(2, 5, dtype=torch.bool), torch.tensor([t % 5, 0]), torch.tensor([1.0, 2.0]),
              obs + 1, torch.ones(2, 5, dtype=torch.bool), torch.tensor([False, t == 4]), torch.zeros(2, dtype=torch.bool))
    b.load_state_dict(a.state_dict())
    assert len(b) == len(a)
    ga, gb = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x, y = a.sample(8, ga), b.sample(8, gb)
    assert torch.equal(x.obs, y.obs) and torch.equal(x.rewards, y.rewards) and torch.equal(x.terminated, y.terminated)
    with pytest.raises(ValueError, match="different capacity"):
        TransitionReplay(32, 2, 3, n_step=2).load_state_dict(a.state_dict())


def test_state_dict_names_every_buffer_and_loads_by_name(tmp_path) -> None:
    """The checkpoint maps names to tensors (weights_only-loadable); a missing or unexpected name, or a buffer
    of another shape or dtype, is refused naming it, and nothing is loaded."""
    a = TransitionReplay(16, 2, 3, n_step=2)
    b = TransitionReplay(16, 2, 3, n_step=2)
    state = a.state_dict()
    assert set(state) == {"total", "buffers", "encoding", "shapes"}
    assert set(state["buffers"]) == {
        "obs.discrete", "obs.floats", "next_obs.discrete", "next_obs.floats", "next_mask", "actions", "rewards",
        "terminated", "truncated", "offsets", "discounts", "intrinsic",
    }
    assert state["buffers"]["rewards"].shape == (0, 2)  # nothing written yet: nothing stored
    assert state["shapes"]["rewards"] == [8, 2]
    assert a.nbytes == sum(math.prod(state["shapes"][n]) * t.element_size() for n, t in a._buffers().items())
    a.add(torch.ones(2, 3), torch.ones(2, 5, dtype=torch.bool), torch.tensor([1, 2]), torch.tensor([3.0, 4.0]),
          torch.ones(2, 3), torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, dtype=torch.bool),
          torch.zeros(2, dtype=torch.bool))  # fmt: skip
    torch.save(a.state_dict(), tmp_path / "replay.pt")
    b.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert b._total == 1 and torch.equal(b._rewards, a._rewards)

    fresh = TransitionReplay(16, 2, 3, n_step=2)
    buffers = dict(a.state_dict()["buffers"])
    del buffers["intrinsic"]
    with pytest.raises(ValueError, match=r"TransitionReplay state: .*missing: intrinsic; unexpected: none"):
        fresh.load_state_dict({"total": 1, "buffers": buffers})
    with pytest.raises(ValueError, match=r"TransitionReplay state: .*missing: none; unexpected: extra"):
        fresh.load_state_dict({"total": 1, "buffers": {**a.state_dict()["buffers"], "extra": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"TransitionReplay state buffer 'rewards': expected torch.float32 \[8, 2\], "
                                         r"got torch.float64 \[8, 2\]"):
        fresh.load_state_dict({**a.state_dict(), "buffers": {**a.state_dict()["buffers"], "rewards": a._rewards.double()}})
    with pytest.raises(ValueError, match="'buffers' mapping"):
        fresh.load_state_dict({"total": 1, "tensors": list(a.state_dict()["buffers"].values())})  # the old format
    assert fresh._total == 0 and not fresh._rewards.any()  # refused states load nothing


def test_agents_name_the_agent_each_transition_came_from(stream_factory) -> None:
    """Every value of the stream identifies its agent (obs[:, 0] = 1000 t + 10 env), so the agent whose data
    each row holds is known without decoding `indices`; the ring has wrapped, so row != global step."""
    stream = stream_factory(20, 4, 3, terminated={(5, 1)}, truncated={(9, 3)})
    buf = TransitionReplay(4 * 8, 4, 3, n_step=3)
    fill(buf, stream)
    batch = buf.sample(256, torch.Generator().manual_seed(0))
    assert batch.agents.dtype == torch.int64 and batch.agents.shape == (256,)
    assert torch.equal(batch.agents, (batch.obs[:, 0] % 1000 // 10).long())
    assert torch.equal(batch.agents, (batch.next_obs[:, 0] % 1000 // 10).long())
    assert set(batch.agents.tolist()) == {0, 1, 2, 3}
