"""The recurrent actor-critic of the PPO family: the R2D2 network's encoder and LSTM with a policy head and a
value head instead of a Q head.

`forward(obs [B, T, D], state) -> (logits [B, T, A], state)` and `initial_state(n, device)` are exactly
`RecurrentQNetwork`'s, so `GreedyPolicy` and `RecurrentActor` (argmax of the masked outputs) play it
unchanged; `evaluate` adds the values and, for training, the per-step memory resets at episode starts.
Like the Q-networks it keeps no hidden state: the caller owns every LSTM state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from townlet.agents.networks import LSTMState, mlp, obs_dim_of
from townlet.world.observation import ObsLayout


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    """CleanRL's head initialisation: orthogonal weights, zero bias. A small policy gain starts the policy
    near uniform over the valid actions; gain 1 on the value head keeps its first estimates in scale."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """ObsEncoder + MLP encoder -> one LSTM (or, with `memory=False`, a Linear+ReLU core that sees only the
    current step: the memory ablation) -> policy logits and a state value. The heads read the encoded
    current step beside the core's output, as `RecurrentQNetwork`'s Q head does."""

    def __init__(
        self,
        layout: ObsLayout | int,
        num_actions: int = 5,
        hidden_size: int = 256,
        encoder_hidden: Sequence[int] = (256,),
        memory: bool = True,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim_of(layout)
        self.num_actions = num_actions
        self.hidden_size = hidden_size
        self.lstm_layers = 1
        self.memory = memory
        self.encoder, width = mlp(
            self.obs_dim, encoder_hidden, layout=layout if isinstance(layout, ObsLayout) else None
        )
        if memory:
            self.lstm = nn.LSTM(width, hidden_size, batch_first=True)
            with torch.no_grad():  # a forget-gate bias > 0 keeps memory by default (Jozefowicz et al., 2015)
                self.lstm.bias_ih_l0[hidden_size : 2 * hidden_size].fill_(forget_bias)
                self.lstm.bias_hh_l0[hidden_size : 2 * hidden_size].zero_()
        else:
            self.core = nn.Sequential(_orthogonal(nn.Linear(width, hidden_size), math.sqrt(2)), nn.ReLU())
        self.policy = _orthogonal(nn.Linear(width + hidden_size, num_actions), 0.01)
        self.value = _orthogonal(nn.Linear(width + hidden_size, 1), 1.0)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> LSTMState:
        """Zeros [1, batch, hidden_size]: the state at the start of an episode."""
        shape = (self.lstm_layers, batch, self.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def features(
        self, obs: Tensor, state: LSTMState | None = None, first: Tensor | None = None
    ) -> tuple[Tensor, LSTMState]:
        """obs [B, T, D] -> (head input [B, T, F], state after the last step). `first` [B, T] bool zeroes an
        agent's memory before the steps it marks (an episode start inside the sequence)."""
        if obs.dim() != 3 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [B, T, {self.obs_dim}], got {list(obs.shape)}")
        b, t, _ = obs.shape
        if state is None:
            state = self.initial_state(b, obs.device)
        x = self.encoder(obs.reshape(b * t, -1)).reshape(b, t, -1)
        if not self.memory:
            return torch.cat([x, self.core(x)], dim=-1), state
        if first is None:
            out, state = self.lstm(x, state)
        else:
            out, state = self._unroll_episodes(x, state, first.bool())
        return torch.cat([x, out], dim=-1), state

    def _unroll_episodes(self, x: Tensor, state: LSTMState, first: Tensor) -> tuple[Tensor, LSTMState]:
        """The LSTM over x [B, T, F] with its memory zeroed where `first` marks an episode start.

        One call over a sequence cannot reset the memory midway, so each agent's row is cut at its episode
        starts into segments, and every segment becomes a row of its own (left-aligned, padded to T) that
        starts from zeros, or from the agent's state for its first segment: one LSTM call over G >= B rows
        instead of T calls of one step (G - B is the number of episode starts inside the rows). The padding
        after a segment's end is computed and never read: the LSTM is causal. A row's final state is read
        after its padding, though, so for the agents whose last segment starts midway a second, packed call
        over those segments alone gives the state at the row's end. Reading G is a host sync, once a call."""
        b, t, f = x.shape
        starts = first.clone()
        starts[:, 0] = True
        flat_starts = starts.reshape(-1)
        segment = flat_starts.cumsum(0) - 1  # [B*T]: the segment of each step, in row order
        begin = flat_starts.nonzero().squeeze(1)  # [G]: the flat step where each segment begins
        g = begin.shape[0]
        steps = torch.arange(t, device=x.device)
        offset = steps - torch.where(starts, steps, 0).cummax(dim=1).values  # [B, T]: step within its segment
        source = (begin.unsqueeze(1) + steps).clamp(max=b * t - 1)  # [G, T]: past a segment's end, ignored
        rows = x.reshape(b * t, f).index_select(0, source.reshape(-1)).view(g, t, f)
        by_row = segment.view(b, t)
        leading, last = by_row[:, 0], by_row[:, -1]  # [B]: each agent's first and last segment
        keep = (~first[:, 0]).to(x.dtype).view(1, b, 1)
        h, c = state
        zeros = x.new_zeros(h.shape[0], g, h.shape[2])
        out, (h_n, c_n) = self.lstm(rows, (zeros.index_copy(1, leading, h * keep),
                                           zeros.index_copy(1, leading, c * keep)))
        out = out.reshape(g * t, -1).index_select(0, segment * t + offset.reshape(-1)).view(b, t, -1)
        h_n, c_n = h_n.index_select(1, last), c_n.index_select(1, last)
        midway = (last != leading).nonzero().squeeze(1)
        if midway.numel():
            lengths = offset[:, -1].index_select(0, midway) + 1  # a last segment runs to the row's end
            packed = pack_padded_sequence(rows.index_select(0, last.index_select(0, midway)), lengths.cpu(),
                                          batch_first=True, enforce_sorted=False)
            _, (h_tail, c_tail) = self.lstm(packed, (zeros[:, : midway.numel()], zeros[:, : midway.numel()]))
            h_n, c_n = h_n.index_copy(1, midway, h_tail), c_n.index_copy(1, midway, c_tail)
        return out, (h_n, c_n)

    def forward(self, obs: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """(logits [B, T, A], state): the interface of `RecurrentQNetwork`, for greedy play."""
        feat, state = self.features(obs, state)
        return self.policy(feat), state

    def evaluate(
        self, obs: Tensor, state: LSTMState | None = None, first: Tensor | None = None
    ) -> tuple[Tensor, Tensor, LSTMState]:
        """(logits [B, T, A], values [B, T], state) for acting and training; see `features` for `first`."""
        feat, state = self.features(obs, state, first)
        return self.policy(feat), self.value(feat).squeeze(-1), state
