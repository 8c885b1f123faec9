"""Intrinsic rewards in replay: stored apart, summed over exactly the extrinsic n-step window, mixed at sampling
time by `with_intrinsic`, covered by nbytes and checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from townlet.replay import SequenceBatch, SequenceReplay, TransitionBatch, TransitionReplay, with_intrinsic

A = 5


def fill_transitions(buf: TransitionReplay, stream, *, intrinsic: bool = True) -> None:
    for t in range(len(stream.steps)):
        extra = {"intrinsic": stream.steps[t]["intrinsic"]} if intrinsic else {}
        buf.add(**stream.transition_args(t), **extra)


def fill_sequences(buf: SequenceReplay, stream, *, intrinsic: bool = True) -> None:
    for t in range(len(stream.steps)):
        extra = {"intrinsic": stream.steps[t]["intrinsic"]} if intrinsic else {}
        buf.add(**stream.sequence_args(t), **extra)


def seq_replay(capacity: int, num_envs: int, obs, **kwargs) -> SequenceReplay:
    args = {"burn_in": 1, "train_len": 2, "stride": 2, "hidden_size": 3, **kwargs}
    return SequenceReplay(capacity, num_envs, obs, **args)


def test_n_step_intrinsic_sums_stop_at_the_same_episode_end(stream_factory) -> None:
    # env 0 terminates at step 1, env 1 is truncated at step 2; intrinsic[t, env] = -(t + 1) / 4 - env / 8
    stream = stream_factory(5, 2, 3, terminated={(1, 0)}, truncated={(2, 1)})
    buf = TransitionReplay(10, 2, 3, n_step=3, gamma=0.5)
    fill_transitions(buf, stream)
    batch = buf.sample(256, torch.Generator().manual_seed(0))
    want = {  # (step, env) -> (steps, intrinsic sum) over rows 0..2 (row * 2 + env is the index)
        (0, 0): (2, -0.25 + 0.5 * -0.5),  # stops at env 0's termination at step 1
        (1, 0): (1, -0.5),
        (2, 0): (3, -0.75 + 0.5 * -1.0 + 0.25 * -1.25),  # a new episode: the full window
        (0, 1): (3, -0.375 + 0.5 * -0.625 + 0.25 * -0.875),  # ends exactly at the window's last step
        (1, 1): (2, -0.625 + 0.5 * -0.875),
        (2, 1): (1, -0.875),
    }
    seen = set()
    for i, idx in enumerate(batch.indices.tolist()):
        key = (idx // 2, idx % 2)
        seen.add(key)
        steps, intrinsic = want[key]
        assert int(batch.steps[i]) == steps, key
        assert float(batch.intrinsic[i]) == pytest.approx(intrinsic, rel=1e-6), key
    assert seen == set(want)


def test_omitted_intrinsic_is_stored_as_zero_even_over_old_values(stream_factory) -> None:
    stream = stream_factory(6, 2, 3, terminated={(2, 1)})
    t_buf, s_buf = TransitionReplay(6, 2, 3, n_step=2), seq_replay(8, 2, 3)
    fill_transitions(t_buf, stream)
    fill_sequences(s_buf, stream)
    assert t_buf.sample(8, torch.Generator().manual_seed(0)).intrinsic.ne(0).all()
    fill_transitions(t_buf, stream, intrinsic=False)  # every row overwritten, none with an intrinsic reward
    fill_sequences(s_buf, stream, intrinsic=False)
    t_batch = t_buf.sample(64, torch.Generator().manual_seed(0))
    s_batch = s_buf.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(t_batch.intrinsic, torch.zeros(64))
    assert torch.equal(s_batch.intrinsic, torch.zeros(64, 3))
    assert t_batch.rewards.ne(0).all()


def test_with_intrinsic_mixes_into_a_copy(stream_factory) -> None:
    stream = stream_factory(6, 2, 3, terminated={(1, 0)}, truncated={(3, 1)})
    buf = TransitionReplay(12, 2, 3, n_step=3, gamma=0.9)
    fill_transitions(buf, stream)
    batch = buf.sample(64, torch.Generator().manual_seed(3))
    rewards = batch.rewards.clone()
    mixed = with_intrinsic(batch, 0.3)
    assert isinstance(mixed, TransitionBatch) and mixed is not batch
    assert torch.allclose(mixed.rewards, rewards + 0.3 * batch.intrinsic)
    assert torch.equal(batch.rewards, rewards)  # the sampled batch is untouched
    for f in dataclasses.fields(batch):
        if f.name != "rewards":
            assert getattr(mixed, f.name) is getattr(batch, f.name)
    assert with_intrinsic(batch, 0.0).rewards is batch.rewards
    # the n-step sum of mixed rewards equals the mix of the n-step sums: store the mix as plain rewards
    mixed_stream = TransitionReplay(12, 2, 3, n_step=3, gamma=0.9)
    for t in range(len(stream.steps)):
        args = stream.transition_args(t)
        mixed_stream.add(**{**args, "rewards": args["rewards"] + 0.3 * stream.steps[t]["intrinsic"]})
    reference = mixed_stream.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(reference.indices, batch.indices)
    assert torch.allclose(reference.rewards, mixed.rewards)


def test_with_intrinsic_on_sequences_is_per_step(stream_factory) -> None:
    stream = stream_factory(8, 2, 3, terminated={(2, 0)})
    buf = seq_replay(16, 2, 3)
    fill_sequences(buf, stream)
    batch = buf.sample(16, torch.Generator().manual_seed(0))
    mixed = with_intrinsic(batch, -2.0)
    assert isinstance(mixed, SequenceBatch)
    assert torch.allclose(mixed.rewards, batch.rewards - 2.0 * batch.intrinsic)
    assert mixed.obs is batch.obs and mixed.valid is batch.valid


def test_with_intrinsic_mixes_the_continuations_too(stream_factory) -> None:
    stream = stream_factory(8, 2, 3, terminated={(2, 0), (4, 1)})
    buf = seq_replay(16, 2, 3, split_episodes=True)
    fill_sequences(buf, stream)
    batch = buf.sample(16, torch.Generator().manual_seed(0))
    cont, before = batch.continuation, batch.continuation.rewards.clone()
    mixed = with_intrinsic(batch, -2.0)
    assert torch.allclose(mixed.continuation.rewards, before - 2.0 * cont.intrinsic)
    assert batch.continuation is cont and torch.equal(cont.rewards, before)  # the sampled batch is untouched
    assert mixed.continuation.start is cont.start


def test_with_intrinsic_needs_intrinsic_rewards() -> None:
    hand_built = TransitionBatch(*(torch.zeros(2) for _ in range(11)))  # as the learner tests build them
    assert hand_built.intrinsic is None
    assert with_intrinsic(hand_built, 0.0).rewards is hand_built.rewards
    with pytest.raises(ValueError, match="no intrinsic"):
        with_intrinsic(hand_built, 0.5)


def test_state_dict_round_trip_keeps_intrinsic_rewards(stream_factory) -> None:
    stream = stream_factory(10, 2, 3, terminated={(4, 1)})
    for make, fill in (
        (lambda: TransitionReplay(16, 2, 3, n_step=2), fill_transitions),
        (lambda: seq_replay(16, 2, 3, prioritized=True), fill_sequences),
    ):
        a, b = make(), make()
        fill(a, stream)
        state = a.state_dict()
        assert torch.equal(state["buffers"]["intrinsic"], a._intrinsic[: min(a._total, a.rows)])  # the written rows
        b.load_state_dict(state)
        x, y = a.sample(32, torch.Generator().manual_seed(5)), b.sample(32, torch.Generator().manual_seed(5))
        assert torch.equal(x.indices, y.indices) and torch.equal(x.intrinsic, y.intrinsic)
        assert x.intrinsic.ne(0).any()
        with pytest.raises(ValueError, match="missing: intrinsic"):  # a state without the intrinsic ring is refused
            b.load_state_dict({"total": 0, "buffers": {k: t for k, t in state["buffers"].items() if k != "intrinsic"}})


@pytest.mark.parametrize(
    ("value", "message"),
    [(torch.zeros(3), "intrinsic: .*shape"), (torch.zeros(2, dtype=torch.int64), "intrinsic: .*dtype")],
)
def test_add_rejects_bad_intrinsic(stream_factory, value, message: str) -> None:
    stream = stream_factory(1, 2, 3)
    t_buf, s_buf = TransitionReplay(8, 2, 3), seq_replay(8, 2, 3)
    with pytest.raises(ValueError, match=message):
        t_buf.add(**stream.transition_args(0), intrinsic=value)
    with pytest.raises(ValueError, match=message):
        s_buf.add(**stream.sequence_args(0), intrinsic=value)
    assert len(t_buf) == 0 and s_buf._total == 0
