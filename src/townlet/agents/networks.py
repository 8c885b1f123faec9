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


class ObsEncoder(nn.Module):
    """The first layer: a Linear over the flat observation, plus a learned embedding of each discrete
    coordinate the layout carries as numbers: the agent's cell (from `position`, x and y scaled to [0, 1])
    and the hour (from `time`, its sine and cosine).

    A Linear sees a coordinate as one number, so "at the Bed's cell" or "between 8 and 18" needs several
    ReLU units to carve out; the embedding gives each cell and hour its own vector, as the one-hot `cell` of
    the full view does. It equals a Linear over those one-hots, at the cost of a lookup.
    """

    def __init__(self, layout: ObsLayout | int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(obs_dim_of(layout), width)
        self.in_features = self.linear.in_features
        self.grid = self.day = 0
        if isinstance(layout, ObsLayout) and "position" in layout:
            self.grid, self.position = layout.grid_size, layout["position"].slice
            self.cell = nn.Embedding(self.grid * self.grid, width)
        if isinstance(layout, ObsLayout) and "time" in layout and layout.day_length > 0:
            self.day, self.time = layout.day_length, layout["time"].slice
            self.hour = nn.Embedding(self.day, width)
        for table in self.embeddings:
            nn.init.normal_(table.weight, std=self.linear.weight.abs().mean().item())

    @property
    def embeddings(self) -> list[nn.Embedding]:
        return [m for m in (getattr(self, "cell", None), getattr(self, "hour", None)) if m is not None]

    def cell_index(self, obs: Tensor) -> Tensor:
        """[...] long: y * grid + x of the agent's cell."""
        xy = (obs[..., self.position] * (self.grid - 1)).round().long().clamp(0, self.grid - 1)
        return xy[..., 1] * self.grid + xy[..., 0]

    def hour_index(self, obs: Tensor) -> Tensor:
        """[...] long: the hour in [0, day) whose angle the `time` field's (sin, cos) gives."""
        sin, cos = obs[..., self.time].unbind(-1)
        turn = torch.atan2(sin, cos) / (2 * torch.pi)
        return (turn * self.day).round().long().remainder(self.day)

    def forward(self, obs: Tensor) -> Tensor:
        x = self.linear(obs)
        if self.grid:
            x = x + self.cell(self.cell_index(obs))
        if self.day:
            x = x + self.hour(self.hour_index(obs))
        return x


def mlp(
    in_dim: int, hidden: Sequence[int], layer_norm: bool = False, layout: ObsLayout | None = None
) -> tuple[nn.Sequential, int]:
    """Linear (+ LayerNorm) + ReLU blocks; returns the module and its output width. With `layout`, the
    first layer is an `ObsEncoder` of that observation (in_dim must be its size)."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        first = layout is not None and not layers
        layers.append(ObsEncoder(layout, h) if first else nn.Linear(width, h))
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
        layout = layout_or_obs_dim if isinstance(layout_or_obs_dim, ObsLayout) else None
        self.body, width = mlp(self.obs_dim, hidden, layer_norm, layout)
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
        self.encoder, self.lstm_input_size = mlp(
            self.obs_dim, encoder_hidden, layout=layout if isinstance(layout, ObsLayout) else None
        )
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
