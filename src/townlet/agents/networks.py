"""Q-networks built from the observation layout, so a level change needs no code change.

`QNetwork` is a feed-forward MLP for the full-view (Markov) levels. `RecurrentQNetwork` is the R2D2 network
for the partial-view levels: an MLP encoder, one LSTM, a Q head. Neither
keeps hidden state inside the module: the caller owns every LSTM state, so acting and learning never
share or overwrite each other's memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from townlet.world.observation import ObsLayout

LSTMState = tuple[Tensor, Tensor]
"""(h, c), each [lstm_layers, batch, hidden_size]."""


def obs_dim_of(layout_or_obs_dim: ObsLayout | int) -> int:
    """The flat observation size of a layout, or the int itself."""
    if isinstance(layout_or_obs_dim, ObsLayout):
        return layout_or_obs_dim.dim
    dim = int(layout_or_obs_dim)
    if dim <= 0:
        raise ValueError(f"observation dim must be positive, got {dim}")
    return dim


def mlp(in_dim: int, hidden: Sequence[int], layer_norm: bool = False) -> tuple[nn.Sequential, int]:
    """Linear (+ LayerNorm) + ReLU blocks; returns the module and its output width."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        width = h
    return nn.Sequential(*layers), width


class QHead(nn.Module):
    """Features -> Q-values. Dueling splits Q into V(s) + A(s, a) - mean_a A(s, a), which learns state values
    without needing every action tried in every state."""

    def __init__(self, in_dim: int, num_actions: int, hidden: int | None = None, dueling: bool = False) -> None:
        super().__init__()
        self.dueling = dueling
        self.trunk, width = mlp(in_dim, [hidden] if hidden else [])
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def forward(self, features: Tensor) -> Tensor:
        x = self.trunk(features)
        adv = self.advantage(x)
        if self.value is None:
            return adv
        return self.value(x) + adv - adv.mean(dim=-1, keepdim=True)


class QNetwork(nn.Module):
    """MLP Q-network for fully observed levels: `forward(obs [..., D]) -> q [..., A]`."""

    def __init__(
        self,
        layout_or_obs_dim: ObsLayout | int,
        num_actions: int = 5,
        hidden: Sequence[int] = (256, 256),
        dueling: bool = False,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim_of(layout_or_obs_dim)
        self.num_actions = num_actions
        self.body, width = mlp(self.obs_dim, hidden, layer_norm)
        self.head = QHead(width, num_actions, dueling=dueling)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.body(obs))


class RecurrentQNetwork(nn.Module):
    """R2D2 Q-network: an MLP encoder of the whole observation -> one LSTM -> Q head.

    `forward(obs [B, T, D], state) -> (q [B, T, A], (h, c))` makes ONE LSTM call over the whole sequence; the
    module stores no hidden state. The encoder sees every field at once (window, position, meters, here,
    time), so its first layer can combine them ("energy low and standing on the Bed"); the head reads the
    encoded step beside the LSTM output, so what the current observation shows need not squeeze through
    the LSTM. A per-field design (a
    CNN over the window, one small encoder per field) learned far slower on L2_partial_fixed: see
    docs/tuning.md. `memory=False` swaps the LSTM for a Linear+ReLU core of the same width that sees only the
    current step (the state passes through unchanged): the same learner and encoder without memory, for the
    memory ablation.
    """

    def __init__(
        self,
        layout: ObsLayout | int,
        num_actions: int = 5,
        hidden_size: int = 256,
        lstm_layers: int = 1,
        encoder_hidden: Sequence[int] = (256,),
        head_hidden: int | None = 256,
        dueling: bool = False,
        forget_bias: float = 1.0,
        memory: bool = True,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim_of(layout)
        self.num_actions = num_actions
        self.hidden_size = hidden_size
        self.lstm_layers = lstm_layers
        self.encoder, self.lstm_input_size = mlp(self.obs_dim, encoder_hidden)
        self.memory = memory
        if memory:
            self.lstm = nn.LSTM(self.lstm_input_size, hidden_size, num_layers=lstm_layers, batch_first=True)
            with torch.no_grad():  # a forget-gate bias > 0 keeps memory by default (Jozefowicz et al., 2015)
                for layer in range(lstm_layers):
                    getattr(self.lstm, f"bias_ih_l{layer}")[hidden_size : 2 * hidden_size].fill_(forget_bias)
                    getattr(self.lstm, f"bias_hh_l{layer}")[hidden_size : 2 * hidden_size].zero_()
        else:
            self.core = nn.Sequential(nn.Linear(self.lstm_input_size, hidden_size), nn.ReLU())
        # the head reads the encoded current step beside the memory, so it need not pass through the LSTM
        self.head = QHead(self.lstm_input_size + hidden_size, num_actions, hidden=head_hidden, dueling=dueling)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> LSTMState:
        """Zeros [lstm_layers, batch, hidden_size]: the state at the start of an episode."""
        shape = (self.lstm_layers, batch, self.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def encode(self, obs: Tensor) -> Tensor:
        """obs [N, D] -> LSTM input [N, lstm_input_size]."""
        return self.encoder(obs)

    def forward(self, obs: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        if obs.dim() != 3 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [B, T, {self.obs_dim}], got {list(obs.shape)}")
        b, t, _ = obs.shape
        if state is None:
            state = self.initial_state(b, obs.device)
        x = self.encode(obs.reshape(b * t, -1)).reshape(b, t, -1)
        if not self.memory:
            return self.head(torch.cat([x, self.core(x)], dim=-1)), state
        out, new_state = self.lstm(x, state)
        return self.head(torch.cat([x, out], dim=-1)), new_state
