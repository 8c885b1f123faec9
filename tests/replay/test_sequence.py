"""SequenceReplay on hand-constructed streams: contents, episode ends, stored states, priorities, wrap."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from townlet.replay import SequenceBatch, SequenceReplay

A = 5


def make(capacity: int, num_envs: int, obs, **kwargs) -> SequenceReplay:
    args = {"burn_in": 2, "train_len": 3, "stride": 2, "hidden_size": 3, **kwargs}
    return SequenceReplay(capacity, num_envs, obs, **args)


def fill(buf: SequenceReplay, stream, start: int = 0, stop: int | None = None) -> None:
    for t in range(start, len(stream.steps) if stop is None else stop):
        buf.add(**{k: v.to(buf.device) for k, v in stream.sequence_args(t).items()},
                intrinsic=stream.steps[t]["intrinsic"].to(buf.device))


def by_index(batch: SequenceBatch) -> dict[int, int]:
    pos: dict[int, int] = {}
    for i, idx in enumerate(batch.indices.tolist()):
        pos.setdefault(idx, i)
    return pos


def check_sequence(buf: SequenceReplay, batch: SequenceBatch, i: int, stream) -> tuple[int, int]:
    """Batch row i must equal the stream from the sequence's start step (first-end substitution applied)."""
    k, env = divmod(int(batch.indices[i]), buf.num_envs)
    assert int(batch.agents[i]) == env
    start, steps = k * buf.stride, buf.burn_in + buf.train_len
    raw = stream.steps[start : start + steps + 1]
    end = next((t for t in range(steps) if raw[t]["terminated"][env] or raw[t]["truncated"][env]), None)
    for t in range(steps + 1):
        if end is not None and t == end + 1:
            want_obs, want_mask = raw[end]["final_obs"][env], raw[end]["final_mask"][env]
        elif end is not None and t > end + 1:
            continue  # don't-care entries
        else:
            want_obs, want_mask = raw[t]["obs"][env], raw[t]["mask"][env]
        assert torch.equal(batch.obs[i, t].cpu(), want_obs), (k, env, t)
        assert torch.equal(batch.masks[i, t].cpu(), want_mask), (k, env, t)
    for t in range(steps):
        term, trunc = bool(raw[t]["terminated"][env]), bool(raw[t]["truncated"][env])
        assert int(batch.actions[i, t]) == int(raw[t]["actions"][env])
        assert float(batch.rewards[i, t]) == float(raw[t]["rewards"][env])
        assert float(batch.intrinsic[i, t]) == float(raw[t]["intrinsic"][env])
        assert bool(batch.terminated[i, t]) is term
        assert bool(batch.truncated[i, t]) is (trunc and not term)
        assert bool(batch.valid[i, t]) is (end is None or t <= end), (k, env, t)
    assert torch.equal(batch.h0[:, i].cpu(), raw[0]["h"][:, env])
    assert torch.equal(batch.c0[:, i].cpu(), raw[0]["c"][:, env])
    return k, env


def check_all(buf: SequenceReplay, stream, draws: int = 512, seed: int = 0) -> set[tuple[int, int]]:
    batch = buf.sample(draws, torch.Generator(device=buf.device).manual_seed(seed))
    t = buf.burn_in + buf.train_len
    layers, hidden = buf.lstm_layers, buf.hidden_size
    assert batch.obs.shape == (draws, t + 1, buf.obs_dim) and batch.obs.dtype == torch.float32
    assert batch.masks.shape == (draws, t + 1, A) and batch.masks.dtype == torch.bool
    assert batch.actions.shape == (draws, t) and batch.actions.dtype == torch.int64
    assert batch.valid.shape == (draws, t) and batch.valid.dtype == torch.bool
    assert batch.intrinsic.shape == (draws, t) and batch.intrinsic.dtype == torch.float32
    assert batch.h0.shape == (layers, draws, hidden) == batch.c0.shape
    assert batch.weights.shape == (draws,) and batch.indices.dtype == torch.int64
    return {check_sequence(buf, batch, i, stream) for i in by_index(batch).values()}


def test_sequences_equal_the_inserted_stream(stream_factory, device) -> None:
    # env 1 dies at step 4; env 2 is truncated at 3 and dies again at 6 (only the first end substitutes);
    # env 0 is terminated and truncated at once at step 7
    stream = stream_factory(14, 3, 4, terminated={(4, 1), (6, 2), (7, 0)}, truncated={(3, 2), (7, 0)}, layers=2)
    buf = make(60, 3, 4, lstm_layers=2, device=device)
    fill(buf, stream)
    assert buf.sequence_length == 6 and buf.rows == 20 and buf.num_slots == 10
    assert len(buf) == 15  # starts 0, 2, 4, 6, 8 have all 6 rows written; 10 and 12 wait
    seen = check_all(buf, stream)
    assert seen == {(k, e) for k in range(5) for e in range(3)}

    # the same facts by hand for sequence k=1 (steps 2..6) of env 1, which dies at its step 2
    batch = buf.sample(400, torch.Generator(device=device).manual_seed(3))
    i = by_index(batch)[1 * 3 + 1]
    assert batch.valid[i].tolist() == [True, True, True, False, False]
    assert batch.terminated[i].tolist() == [False, False, True, False, False]
    assert torch.equal(batch.obs[i, 3].cpu(), stream.steps[4]["final_obs"][1])
    assert torch.equal(batch.obs[i, 2].cpu(), stream.steps[4]["obs"][1])
    assert torch.equal(batch.masks[i, 3].cpu(), stream.steps[4]["final_mask"][1])
    want_h0 = torch.tensor([[201.0, 201.001, 201.002], [201.5, 201.501, 201.502]])
    assert torch.allclose(batch.h0[:, i].cpu(), want_h0) and torch.equal(batch.c0[:, i], -batch.h0[:, i])
    # env 2, k=1 (steps 2..6): truncated at its step 1 -> bootstrap entry obs[2] is the final obs of step 3
    j = by_index(batch)[1 * 3 + 2]
    assert batch.truncated[j].tolist() == [False, True, False, False, False]
    assert batch.valid[j].tolist() == [True, True, False, False, False]
    assert torch.equal(batch.obs[j, 2].cpu(), stream.steps[3]["final_obs"][2])


def check_continuation(buf: SequenceReplay, batch: SequenceBatch, i: int, stream) -> tuple[int, int]:
    """Row i's continuation must be the stream from the step after the sequence's first episode end, up to
    the sequence's end and that episode's own first end (whose final obs/mask are substituted)."""
    cont = batch.continuation
    k, env = divmod(int(batch.indices[i]), buf.num_envs)
    first, steps = k * buf.stride, buf.burn_in + buf.train_len
    raw = stream.steps[first : first + steps + 1]
    ended = [bool(r["terminated"][env] or r["truncated"][env]) for r in raw[:steps]]
    start = ended.index(True) + 1 if any(ended) else steps
    assert int(cont.start[i]) == start and int(cont.indices[i]) == int(batch.indices[i])
    assert float(cont.weights[i]) == float(batch.weights[i])
    assert not cont.h0[:, i].any() and not cont.c0[:, i].any()
    end = next((j for j in range(steps - start) if ended[start + j]), None)
    for j in range(steps):
        assert bool(cont.valid[i, j]) is (start + j < steps and (end is None or j <= end)), (k, env, j)
    for j in range(steps - start):
        if end is not None and j > end:
            break
        r = raw[start + j]
        assert int(cont.actions[i, j]) == int(r["actions"][env])
        assert float(cont.rewards[i, j]) == float(r["rewards"][env])
        assert float(cont.intrinsic[i, j]) == float(r["intrinsic"][env])
        assert bool(cont.terminated[i, j]) is bool(r["terminated"][env])
        assert torch.equal(cont.obs[i, j].cpu(), r["obs"][env]) and torch.equal(cont.masks[i, j].cpu(), r["mask"][env])
    if start < steps:
        nxt = raw[start + end]["final_obs"][env] if end is not None else raw[steps]["obs"][env]
        assert torch.equal(cont.obs[i, (end + 1) if end is not None else steps - start].cpu(), nxt)
    return k, env


def test_continuations_are_the_next_episodes(stream_factory, device) -> None:
    # env 1: ends at 4 and 6 (a two-step episode inside sequences 1 and 2); env 2: at 3, 6 and 11; env 0 at 7
    ends = {(4, 1), (6, 1), (6, 2), (7, 0), (11, 2)}
    stream = stream_factory(20, 3, 4, terminated=ends, truncated={(3, 2)}, layers=2)
    buf = make(60, 3, 4, lstm_layers=2, device=device, split_episodes=True)
    fill(buf, stream)
    batch = buf.sample(512, torch.Generator(device=device).manual_seed(0))
    assert batch.continuation is not None and batch.continuation.continuation is None
    assert batch.continuation.obs.shape == batch.obs.shape and batch.continuation.valid.shape == batch.valid.shape
    rows = by_index(batch).values()
    assert {check_sequence(buf, batch, i, stream) for i in rows} == {check_continuation(buf, batch, i, stream) for i in rows}
    assert len(set(rows)) == len(buf)
    # by hand: sequence k=1 (steps 2..6) of env 1 ends at its step 2; its continuation is steps 5, 6, ending at 6
    i = by_index(batch)[1 * 3 + 1]
    cont = batch.continuation
    assert int(cont.start[i]) == 3 and cont.valid[i].tolist() == [True, True, False, False, False]
    assert torch.equal(cont.obs[i, 0].cpu(), stream.steps[5]["obs"][1])
    assert torch.equal(cont.obs[i, 2].cpu(), stream.steps[6]["final_obs"][1])
    # a sequence without an episode end has an empty continuation that starts at T
    j = by_index(batch)[0 * 3 + 0]
    assert int(cont.start[j]) == 5 and not cont.valid[j].any()


def test_continuations_train_every_step_once(stream_factory) -> None:
    """With stride = train_len the training windows tile each agent's stream; with the continuations every
    step in them is a valid training step of exactly one sequence, unless it follows a second episode end
    inside one sequence (two ends within T steps)."""
    ends = {(5, 0), (16, 0), (30, 0), (9, 1), (22, 1), (29, 1), (31, 1)}
    stream = stream_factory(44, 2, 3, terminated=ends)
    burn_in, train_len = 2, 4
    for split in (False, True):
        buf = make(200, 2, 3, burn_in=burn_in, train_len=train_len, stride=train_len, split_episodes=split)
        fill(buf, stream)
        batch = buf.sample(2000, torch.Generator().manual_seed(0))
        trained: dict[tuple[int, int], int] = {}
        for idx, i in by_index(batch).items():
            k, env = divmod(idx, 2)
            steps = [t for t in range(burn_in, burn_in + train_len) if batch.valid[i, t]]
            if split:
                cont, start = batch.continuation, int(batch.continuation.start[i])
                steps += [start + j for j in range(train_len + burn_in) if cont.valid[i, j] and start + j >= burn_in]
            for t in steps:
                key = (k * train_len + t, env)
                trained[key] = trained.get(key, 0) + 1
        assert set(trained.values()) == {1}
        windows = {(t, e) for e in range(2) for t in range(burn_in, len(buf) // 2 * train_len + burn_in)}
        missed = windows - trained.keys()
        if split:
            assert missed == {(32, 1), (33, 1)}  # sequence 7 (steps 28..33) of env 1 ends at 29 and again at 31
        else:
            assert {(t, 0) for t in range(6, 10)} <= missed and len(missed) > 12


def test_only_complete_sequences_are_sampleable(stream_factory) -> None:
    stream = stream_factory(12, 2, 3, terminated={(0, 0), (1, 1)})
    buf = make(40, 2, 3)
    lengths = []
    for t in range(12):
        with pytest.raises(ValueError, match="nothing is sampleable") if len(buf) == 0 else nullcontext():
            buf.sample(2)
        fill(buf, stream, t, t + 1)
        lengths.append(len(buf))
    # sequence k covers steps 2k..2k+5: complete after step 2k+5 even if its episode ended earlier
    assert lengths == [0, 0, 0, 0, 0, 2, 2, 4, 4, 6, 6, 8]


def test_wrapped_ring_never_samples_overwritten_data(stream_factory) -> None:
    ends = {(5, 0), (9, 1), (14, 0), (15, 1)}
    stream = stream_factory(23, 2, 3, terminated=ends, truncated={(11, 0)})
    buf = make(17, 2, 3)  # 8 rows (a multiple of stride 2), 4 slots
    assert buf.rows == 8 and buf.capacity == 16
    for t in range(23):
        fill(buf, stream, t, t + 1)
        total = t + 1
        oldest = max(0, total - 8)
        live = {k for k in range(12) if k * 2 >= oldest and k * 2 + 6 <= total}
        assert len(buf) == 2 * len(live)
        if live:
            seen = check_all(buf, stream, draws=64, seed=t)
            assert {k for k, _ in seen} == live
    assert live == {8}  # steps 15..22 are stored: only the sequence from step 16 is whole


def test_prioritized_sampling_weights_and_formula(stream_factory) -> None:
    stream = stream_factory(9, 2, 3)
    buf = make(24, 2, 3, burn_in=1, stride=4, prioritized=True)  # T = 4, 12 rows, 3 slots
    fill(buf, stream, 0, 5)
    assert len(buf) == 2
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(batch.weights, torch.ones(64))  # new sequences share the max priority
    # R2D2 priority 0.9 * max + 0.1 * mean over valid steps: id 0 -> 2.9; id 1 -> 4.0 (invalid 100s ignored)
    td = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    buf.update_priorities(torch.tensor([0, 1]), td, valid)
    alpha, beta = 0.6, 0.4
    p0, p1 = 2.9**alpha, 4.0**alpha
    batch = buf.sample(20000, torch.Generator().manual_seed(1))
    freq1 = (batch.indices == 1).float().mean().item()
    assert freq1 == pytest.approx(p1 / (p0 + p1), abs=0.015)
    w0 = batch.weights[batch.indices == 0]
    w1 = batch.weights[batch.indices == 1]
    assert torch.allclose(w0, torch.ones_like(w0))
    assert torch.allclose(w1, torch.full_like(w1, (p1 / p0) ** -beta))
    # new sequences enter at the running max priority (4.0), i.e. like id 1
    fill(buf, stream, 5, 9)
    assert len(buf) == 4
    batch = buf.sample(4000, torch.Generator().manual_seed(2))
    total = p0 + 3 * p1
    for idx, p in [(0, p0), (1, p1), (2, p1), (3, p1)]:
        expected_w = (4 * p / total) ** -beta / (4 * p0 / total) ** -beta
        assert torch.allclose(batch.weights[batch.indices == idx], torch.tensor(expected_w))
    counts = torch.bincount(batch.indices, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.tensor([p0, p1, p1, p1]) / total, atol=0.025)


def test_priority_duplicates_take_the_max_and_no_valid_steps_gives_eps(stream_factory) -> None:
    stream = stream_factory(9, 2, 3)
    buf = make(24, 2, 3, burn_in=1, stride=4, prioritized=True)  # live k = 0, 1 -> ids 0..3
    fill(buf, stream)
    valid = torch.ones(4, 3, dtype=torch.bool)
    valid[3] = False
    # id 0 twice (priorities 1 and 2: the larger wins), id 1 -> 4, id 2 has no valid step -> eps; id 3
    # keeps the max priority it entered with (1)
    buf.update_priorities(torch.tensor([0, 0, 1, 2]), torch.tensor([[1.0] * 3, [2.0] * 3, [4.0] * 3, [9.0] * 3]), valid)
    batch = buf.sample(4000, torch.Generator().manual_seed(0))
    counts = torch.bincount(batch.indices, minlength=4)
    assert counts[2] <= 4  # P(id 2) = eps**0.6 / (2**0.6 + 4**0.6 + 1) ~ 5e-5
    w = [batch.weights[batch.indices == i][0] for i in (0, 1, 3)]
    exponent = -0.6 * 0.4  # weights ~ P ** -beta ~ p ** (-alpha * beta)
    assert float(w[0] / w[2]) == pytest.approx(2.0**exponent, rel=1e-5)
    assert float(w[1] / w[2]) == pytest.approx(4.0**exponent, rel=1e-5)


def test_stale_priority_updates_are_ignored(stream_factory) -> None:
    stream = stream_factory(30, 2, 3)
    buf = make(24, 2, 3, prioritized=True)  # 12 rows, 6 slots
    fill(buf, stream, 0, 10)
    old = buf.sample(16, torch.Generator().manual_seed(0)).indices
    fill(buf, stream, 10, 30)  # k = 0..2 are overwritten; live k = 9..12 all entered at max priority 1
    buf.update_priorities(old, torch.full((16, 3), 50.0), torch.ones(16, 3, dtype=torch.bool))
    batch = buf.sample(512, torch.Generator().manual_seed(1))
    assert torch.equal(batch.weights, torch.ones(512))
    assert set(batch.indices.tolist()) == {k * 2 + e for k in (9, 10, 11, 12) for e in range(2)}
    fill(buf, stream, 0, 2)  # a newer sequence still enters at max priority 1, not 50
    batch = buf.sample(512, torch.Generator().manual_seed(2))
    assert torch.equal(batch.weights, torch.ones(512))


def test_uniform_buffer_ignores_priority_updates(stream_factory) -> None:
    stream = stream_factory(8, 2, 3)
    buf = make(24, 2, 3)
    fill(buf, stream)
    before = buf.sample(64, torch.Generator().manual_seed(0))
    buf.update_priorities(before.indices, torch.full((64, 3), 9.0), torch.ones(64, 3, dtype=torch.bool))
    after = buf.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(before.indices, after.indices)
    assert torch.equal(after.weights, torch.ones(64))


@pytest.mark.parametrize("prioritized", [False, True])
def test_seeded_sampling_is_reproducible(stream_factory, prioritized: bool) -> None:
    stream = stream_factory(20, 3, 4, terminated={(5, 1)})
    buf = make(60, 3, 4, prioritized=prioritized)
    fill(buf, stream)
    if prioritized:
        ids = torch.arange(len(buf))  # live k = 0..7 of 3 envs
        td = torch.rand(len(ids), 3, generator=torch.Generator().manual_seed(0))
        buf.update_priorities(ids, td, torch.ones(len(ids), 3, dtype=torch.bool))
    a = buf.sample(16, torch.Generator().manual_seed(5))
    b = buf.sample(16, torch.Generator().manual_seed(5))
    c = buf.sample(16, torch.Generator().manual_seed(6))
    for name in ("obs", "masks", "actions", "weights", "indices", "h0"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.indices, c.indices)


def test_compact_storage_round_trips_exactly(stream_factory, l2_layout, device) -> None:
    stream = stream_factory(12, 2, l2_layout, terminated={(3, 0)}, truncated={(6, 1)})
    buf = make(24, 2, l2_layout, device=device)
    fill(buf, stream)
    assert check_all(buf, stream) == {(k, e) for k in range(4) for e in range(2)}
    discrete = sum(f.size for f in l2_layout.fields if f.discrete)
    per_obs = discrete + 4 * (l2_layout.dim - discrete)
    rows, slots, n, hidden = 12, 6, 2, 3
    per_step = 2 * per_obs + 2 * A + 1 + 4 + 4 + 1 + 1  # obs, final obs, masks, uint8 action, 2 rewards, flags
    states = 2 * slots * n * hidden * 4
    assert buf.nbytes == rows * n * per_step + states + 6 * 8 + 4


def test_nbytes_counts_priorities_and_layers() -> None:
    buf = make(40, 4, 10, lstm_layers=2, hidden_size=8, prioritized=True)  # 10 rows, 5 slots
    per_step = 2 * 10 * 4 + 2 * A + 1 + 4 + 4 + 2
    states = 2 * 2 * 5 * 4 * 8 * 4
    assert buf.nbytes == 10 * 4 * per_step + states + 6 * 8 + 5 * 4 * 4 + 4


def _add_args(**override):
    good = {
        "obs": torch.zeros(2, 3),
        "mask": torch.ones(2, A, dtype=torch.bool),
        "actions": torch.zeros(2, dtype=torch.int64),
        "rewards": torch.zeros(2),
        "terminated": torch.zeros(2, dtype=torch.bool),
        "truncated": torch.zeros(2, dtype=torch.bool),
        "final_obs": torch.zeros(2, 3),
        "final_mask": torch.ones(2, A, dtype=torch.bool),
        "h": torch.zeros(1, 2, 3),
        "c": torch.zeros(1, 2, 3),
    }
    return {**good, **override}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("obs", torch.zeros(2, 4), r"obs: expected a float tensor of shape \[2, 3\]"),
        ("mask", torch.ones(2, A), "mask: .*dtype"),
        ("actions", torch.zeros(2), "actions: .*dtype"),
        ("rewards", torch.zeros(2, 1), "rewards: .*shape"),
        ("terminated", torch.zeros(2), "terminated: .*dtype"),
        ("truncated", torch.zeros(3, dtype=torch.bool), "truncated: .*shape"),
        ("final_obs", torch.zeros(2, 3, dtype=torch.int8), "final_obs: .*dtype"),
        ("final_mask", torch.ones(2, 4, dtype=torch.bool), "final_mask: .*shape"),
        ("h", torch.zeros(2, 3), r"h: .*\[1, 2, 3\] \[lstm_layers, num_envs, hidden_size\]"),
        ("c", torch.zeros(1, 2, 4), "c: .*shape"),
    ],
)
def test_add_rejects_bad_shapes_and_dtypes(name: str, value, message: str) -> None:
    buf = make(24, 2, 3)
    with pytest.raises(ValueError, match=message):
        buf.add(**_add_args(**{name: value}))
    buf.add(**_add_args())


def test_write_backs_reject_bad_shapes(stream_factory) -> None:
    buf = make(24, 2, 3, prioritized=True)
    fill(buf, stream_factory(6, 2, 3))
    ids, ok_td, ok_valid = torch.tensor([0, 1]), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="indices: expected a 1-D"):
        buf.update_priorities(ids.view(2, 1), ok_td, ok_valid)
    with pytest.raises(ValueError, match=r"indices: .*dtype"):
        buf.update_priorities(ids.float(), ok_td, ok_valid)
    with pytest.raises(ValueError, match=r"td_abs: .*\[2, 3\] \[B, train_len\]"):
        buf.update_priorities(ids, torch.zeros(2, 5), ok_valid)
    with pytest.raises(ValueError, match=r"valid: .*dtype"):
        buf.update_priorities(ids, ok_td, ok_valid.float())
    buf.update_priorities(ids[:0], ok_td[:0], ok_valid[:0])  # an empty update is a no-op
    assert torch.equal(buf.sample(8).weights, torch.ones(8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 24}, "capacity"),  # 12 rows round down to 8 (stride 8) < 13 obs per sequence
        ({"capacity": 10}, "capacity"),
        ({"num_envs": 0}, "num_envs"),
        ({"burn_in": -1}, "burn_in"),
        ({"train_len": 0}, "train_len"),
        ({"stride": 0}, "stride"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"lstm_layers": 0}, "lstm_layers"),
        ({"priority_eta": 1.5}, "priority_eta"),
        ({"priority_alpha": -1.0}, "priority_alpha"),
        ({"obs": 0}, "obs"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"capacity": 40, "num_envs": 2, "obs": 3, "burn_in": 4, "train_len": 8, "hidden_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        SequenceReplay(args.pop("capacity"), args.pop("num_envs"), args.pop("obs"), **args)


def test_prioritized_slot_count_is_limited_before_allocating() -> None:
    with pytest.raises(ValueError, match="multinomial"):
        SequenceReplay(2**24 + 8, 8, 3, burn_in=0, train_len=1, hidden_size=1, prioritized=True)


def test_default_stride_is_train_len() -> None:
    buf = SequenceReplay(200, 2, 3, burn_in=4, train_len=8, hidden_size=3)
    assert buf.stride == 8 and buf.rows == 96 and buf.num_slots == 12 and buf.sequence_length == 13
    assert math.isclose(buf.importance_beta, 0.4)


@settings(max_examples=40, deadline=None)
@given(
    num_envs=st.integers(1, 3),
    burn_in=st.integers(0, 3),
    train_len=st.integers(1, 4),
    stride=st.integers(1, 6),
    extra_slots=st.integers(0, 3),
    length=st.integers(0, 30),
    ends=st.sets(st.tuples(st.integers(0, 29), st.integers(0, 2), st.booleans()), max_size=20),
)
def test_matches_the_stream_for_random_geometries(
    stream_factory, num_envs, burn_in, train_len, stride, extra_slots, length, ends
) -> None:
    term = {(t, e) for t, e, is_term in ends if is_term and e < num_envs}
    trunc = {(t, e) for t, e, is_term in ends if not is_term and e < num_envs}
    stream = stream_factory(length, num_envs, 3, terminated=term, truncated=trunc)
    seq_len = burn_in + train_len + 1
    rows = (-(-seq_len // stride) + extra_slots) * stride
    buf = make(rows * num_envs, num_envs, 3, burn_in=burn_in, train_len=train_len, stride=stride)
    assert buf.rows == rows
    fill(buf, stream)
    live = [k for k in range(length + 1) if k * stride >= max(0, length - rows) and k * stride + seq_len <= length]
    assert len(buf) == len(live) * num_envs
    if live:
        assert check_all(buf, stream, draws=256) == {(k, e) for k in live for e in range(num_envs)}


def test_state_dict_round_trip_restores_contents_counters_and_priorities(stream_factory) -> None:
    stream = stream_factory(12, 2, 3, terminated={(0, 0), (1, 1)})
    a = make(40, 2, 3, prioritized=True)
    fill(a, stream)
    first = a.sample(4, torch.Generator().manual_seed(0))
    a.update_priorities(first.indices, torch.rand(4, 3), torch.ones(4, 3, dtype=torch.bool))
    b = make(40, 2, 3, prioritized=True)
    b.load_state_dict(a.state_dict())
    assert len(b) == len(a)
    x, y = a.sample(6, torch.Generator().manual_seed(1)), b.sample(6, torch.Generator().manual_seed(1))
    assert torch.equal(x.indices, y.indices) and torch.equal(x.obs, y.obs) and torch.equal(x.weights, y.weights)
    with pytest.raises(ValueError, match="different capacity"):
        make(20, 2, 3, prioritized=True).load_state_dict(a.state_dict())


def test_state_dict_buffers_are_named_and_checked_by_name(tmp_path, l2_layout) -> None:
    """Compact obs rings contribute their parts under prefixed names; a replay built without advice has no
    advice rows, so a checkpoint of one with advice is refused naming the buffer; weights_only loads it."""
    a = make(40, 2, l2_layout, advice=True)
    state = a.state_dict()
    names = set(state["buffers"])
    assert {"obs.discrete", "obs.floats", "final_obs.discrete", "final_obs.floats", "h", "c", "advice"} <= names
    assert set(state["shapes"]) == names  # every buffer's whole shape, checked on loading
    assert a.nbytes == sum(math.prod(state["shapes"][n]) * t.element_size() for n, t in a._buffers().items())
    torch.save(a.state_dict(), tmp_path / "replay.pt")
    make(40, 2, l2_layout, advice=True).load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    with pytest.raises(ValueError, match=r"SequenceReplay state buffer 'advice': expected torch.uint8 \[0, 2\]"):
        make(40, 2, l2_layout).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"SequenceReplay state: .*missing: h; unexpected: h0"):
        buffers = dict(a.state_dict()["buffers"])
        buffers["h0"] = buffers.pop("h")
        make(40, 2, l2_layout, advice=True).load_state_dict({"total": 0, "buffers": buffers})


def test_agents_name_the_agent_each_sequence_came_from(stream_factory) -> None:
    """Every obs of the stream identifies its agent (obs[..., 0] = 1000 t + 10 env, + 0.5 for a final obs): each
    sampled row's agent, and its continuation's, is `agents`, so no caller decodes `indices` for it."""
    stream = stream_factory(30, 3, 3, terminated={(4, 0), (11, 2), (12, 1)}, truncated={(7, 1), (20, 2)})
    buf = make(3 * 12, 3, 3, split_episodes=True, prioritized=True)
    fill(buf, stream)
    batch = buf.sample(128, torch.Generator().manual_seed(0))
    assert batch.agents.dtype == torch.int64 and batch.agents.shape == (128,)
    for part in (batch, batch.continuation):
        agent_of_obs = (part.obs[..., 0] % 1000 // 10).long()  # [B, T + 1]
        assert torch.equal(part.agents, agent_of_obs[:, 0])
        assert bool((agent_of_obs == part.agents.view(-1, 1)).all())  # the whole window is that agent's
        assert torch.equal(part.rewards[:, 0].long() // 100, part.agents)  # reward = t + 1 + 100 env
    assert set(batch.agents.tolist()) == {0, 1, 2}
    assert bool((batch.continuation.start < buf.steps_per_sequence).any())  # some continuations are real


def test_advice_is_stored_per_step_and_sampled_with_the_sequence(stream_factory) -> None:
    """With advice=True every step keeps the action a guide would have taken there; the sampled [B, T] advice
    is the stream's, step for step, and a replay without it refuses advice (and vice versa)."""
    stream = stream_factory(40, 3, 3)
    buf = make(3 * 40, 3, 3, advice=True)
    advice = [(torch.arange(3) * 2 + t) % A for t in range(40)]
    for t in range(40):
        buf.add(**stream.sequence_args(t), advice=advice[t])
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    for i in range(64):
        k, env = divmod(int(batch.indices[i]), buf.num_envs)
        want = [int(advice[k * buf.stride + j][env]) for j in range(buf.burn_in + buf.train_len)]
        assert batch.advice[i].tolist() == want
    with pytest.raises(ValueError, match=r"advice: required \(the replay was built with advice=True\)"):
        buf.add(**stream.sequence_args(0))
    with pytest.raises(ValueError, match=r"advice: not stored"):
        make(3 * 40, 3, 3).add(**stream.sequence_args(0), advice=advice[0])
    assert make(24, 2, 3)._advice.numel() == 0  # no memory spent without advice
