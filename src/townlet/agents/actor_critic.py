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
        agent's memory before the steps it marks (an episode start inside the sequence): then the LSTM runs
        one step at a time, since one call over the sequence cannot reset it midway."""
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
            h, c = state
            keep = (~first.bool()).to(x.dtype).T.reshape(t, 1, b, 1)  # [T, 1, B, 1]: state * (1 - first)
            outs = []
            for i in range(t):
                o, (h, c) = self.lstm(x[:, i : i + 1], (h * keep[i], c * keep[i]))
                outs.append(o)
            out, state = torch.cat(outs, dim=1), (h, c)
        return torch.cat([x, out], dim=-1), state

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
