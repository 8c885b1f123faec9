"""Network shapes, layout-driven construction, one LSTM call per forward, every field used."""

from __future__ import annotations

import pytest
import torch

from townlet.agents import QNetwork, RecurrentQNetwork
from townlet.world.config import load_level
from townlet.world.observation import ObsLayout


def layout(name: str) -> ObsLayout:
    return ObsLayout.for_level(load_level(name))


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_qnetwork_shapes_from_layout_and_int(dueling: bool, layer_norm: bool) -> None:
    torch.manual_seed(0)
    lay = layout("L1_full")
    net = QNetwork(lay, hidden=(32, 16), dueling=dueling, layer_norm=layer_norm)
    assert net.obs_dim == lay.dim == 87
    assert net(torch.randn(6, lay.dim)).shape == (6, 5)
    assert net(torch.randn(2, 3, lay.dim)).shape == (2, 3, 5)  # any leading dims
    assert QNetwork(10, num_actions=3, hidden=(8,))(torch.randn(4, 10)).shape == (4, 3)
    has_ln = any(isinstance(m, torch.nn.LayerNorm) for m in net.modules())
    assert has_ln == layer_norm


def test_dueling_head_is_value_plus_centered_advantage() -> None:
    torch.manual_seed(0)
    net = QNetwork(7, hidden=(16,), dueling=True)
    x = torch.randn(5, 7)
    feats = net.body(x)
    value = net.head.value(feats)
    # mean over actions of Q equals V because the advantages are centered
    torch.testing.assert_close(net(x).mean(-1, keepdim=True), value)


def test_obs_dim_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        QNetwork(0)


@pytest.mark.parametrize("level", ["L1_full", "L2_partial", "L2_partial_fixed", "L3_temporal"])
def test_recurrent_network_shapes_from_the_layout(level: str) -> None:
    torch.manual_seed(0)
    lay = layout(level)
    net = RecurrentQNetwork(lay, hidden_size=24, lstm_layers=2, encoder_hidden=(32, 16))
    assert net.encoder[0].in_features == lay.dim and net.lstm_input_size == 16
    q, (h, c) = net(torch.randn(3, 7, lay.dim))
    assert q.shape == (3, 7, 5)
    assert h.shape == c.shape == (2, 3, 24)
    h0, c0 = net.initial_state(3, "cpu")
    assert h0.shape == (2, 3, 24) and not h0.any() and not c0.any()
    # None state means the zero state
    torch.testing.assert_close(net(torch.zeros(3, 2, lay.dim))[0], net(torch.zeros(3, 2, lay.dim), (h0, c0))[0])


def test_one_lstm_call_per_forward_and_no_state_in_module() -> None:
    torch.manual_seed(0)
    lay = layout("L2_partial")
    net = RecurrentQNetwork(lay, hidden_size=16, encoder_hidden=(32,))
    calls: list[tuple[int, ...]] = []
    net.lstm.register_forward_hook(lambda _m, inp, _out: calls.append(tuple(inp[0].shape)))
    obs = torch.randn(2, 11, lay.dim)
    q1, _ = net(obs)
    assert calls == [(2, 11, net.lstm_input_size)]  # the whole sequence in one call
    q2, _ = net(obs)
    assert torch.equal(q1, q2)  # no hidden state kept between calls


def test_sequence_forward_equals_stepwise_forward_with_carried_state() -> None:
    torch.manual_seed(0)
    lay = layout("L3_temporal")
    net = RecurrentQNetwork(lay, hidden_size=16, encoder_hidden=(32,))
    obs = torch.randn(3, 6, lay.dim)
    state = (torch.randn(1, 3, 16), torch.randn(1, 3, 16))
    q_seq, final = net(obs, state)
    s = state
    steps = []
    for t in range(6):
        q, s = net(obs[:, t : t + 1], s)
        steps.append(q)
    torch.testing.assert_close(torch.cat(steps, 1), q_seq)
    torch.testing.assert_close(s[0], final[0])
    torch.testing.assert_close(s[1], final[1])


@pytest.mark.parametrize("field", ["window", "position", "meters", "here", "time", "progress"])
def test_every_field_changes_the_output(field: str) -> None:
    torch.manual_seed(0)
    lay = layout("L3_temporal")
    net = RecurrentQNetwork(lay, hidden_size=16, encoder_hidden=(32,))
    obs = torch.rand(4, 3, lay.dim)
    changed = obs.clone()
    changed[..., lay[field].slice] += 1.0
    assert not torch.allclose(net(obs)[0], net(changed)[0])
    # and only through the observation: the gradient reaches that field's inputs
    obs.requires_grad_(True)
    net(obs)[0].sum().backward()
    assert obs.grad is not None and obs.grad[..., lay[field].slice].abs().sum() > 0


def test_forget_bias_initialisation() -> None:
    net = RecurrentQNetwork(6, hidden_size=4, lstm_layers=2, forget_bias=1.0, encoder_hidden=(8,))
    for layer in range(2):
        b = getattr(net.lstm, f"bias_ih_l{layer}") + getattr(net.lstm, f"bias_hh_l{layer}")
        assert torch.all(b[4:8] == 1.0)


def test_recurrent_dueling_and_bad_input() -> None:
    torch.manual_seed(0)
    net = RecurrentQNetwork(6, hidden_size=8, dueling=True, head_hidden=None, encoder_hidden=(8,))
    assert net(torch.randn(2, 4, 6))[0].shape == (2, 4, 5)
    with pytest.raises(ValueError, match=r"\[B, T, 6\]"):
        net(torch.randn(2, 6))


def test_memoryless_core_sees_only_the_current_step() -> None:
    """memory=False (the ablation): same encoders, no LSTM; each step's Q depends on that step's obs only."""
    torch.manual_seed(0)
    layout = ObsLayout.for_level(load_level("L2_partial"))
    net = RecurrentQNetwork(layout, hidden_size=32, memory=False)
    assert not any(isinstance(m, torch.nn.LSTM) for m in net.modules())
    obs = torch.randn(3, 6, layout.dim)
    state = net.initial_state(3)
    q, out_state = net(obs, state)
    assert q.shape == (3, 6, 5) and out_state is state
    changed = obs.clone()
    changed[:, 2] += 1.0
    q2, _ = net(changed, (state[0] + 1.0, state[1]))
    torch.testing.assert_close(q2[:, :2], q[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(q2[:, 3:], q[:, 3:], rtol=0, atol=0)
    assert not torch.allclose(q2[:, 2], q[:, 2])


def test_obs_encoder_embeds_the_agents_cell_and_the_hour_read_from_the_observation() -> None:
    from townlet.agents.networks import ObsEncoder
    from townlet.world import World

    torch.manual_seed(0)
    world = World("L3_temporal", 64, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # wander to many cells
        obs, *_ = world.step((torch.rand(64, 5, generator=gen) * world.action_mask()).argmax(1))
    world.hour = torch.arange(64) % 24  # every hour of the day, midnight included
    obs = world.observe()
    enc = ObsEncoder(world.obs_layout, 16)
    assert torch.equal(enc.cell_index(obs), world.positions[:, 1] * 8 + world.positions[:, 0])
    assert len(set(enc.cell_index(obs).tolist())) > 5
    assert torch.equal(enc.hour_index(obs), world.hour)
    # the output is the Linear of the observation plus one learned vector per cell and per hour
    expected = enc.linear(obs) + enc.cell.weight[enc.cell_index(obs)] + enc.hour.weight[world.hour]
    torch.testing.assert_close(enc(obs), expected)
    enc(obs).sum().backward()
    used = torch.zeros(64, dtype=torch.bool)
    used[enc.cell_index(obs)] = True
    grad_rows = enc.cell.weight.grad.abs().sum(1) > 0
    assert torch.equal(grad_rows, used)  # each agent's cell vector, and only those, learns


def test_obs_encoder_adds_nothing_where_the_layout_has_no_coordinates() -> None:
    from townlet.agents.networks import ObsEncoder

    for name, cell, hour in [("L1_full", False, False), ("L2_partial", True, False), ("L3_temporal", True, True)]:
        enc = ObsEncoder(layout(name), 8)
        assert (hasattr(enc, "cell"), hasattr(enc, "hour")) == (cell, hour)
    plain = ObsEncoder(10, 4)  # a bare size: just the Linear
    x = torch.randn(3, 10)
    torch.testing.assert_close(plain(x), plain.linear(x))
    assert isinstance(QNetwork(layout("L2_partial_fixed")).body[0], ObsEncoder)
    assert isinstance(RecurrentQNetwork(layout("L2_partial_fixed")).encoder[0], ObsEncoder)
