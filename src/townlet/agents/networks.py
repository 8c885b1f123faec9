"""Q-networks built from the observation layout, so a level change needs no code change.

`QNetwork` is a feed-forward MLP for the full-view (Markov) levels. `RecurrentQNetwork` is the R2D2 network
for the partial-view levels: per-field encoders (a CNN over the local window), one LSTM, a Q head. Neither
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


class WindowEncoder(nn.Module):
    """Small CNN over the channel-major local window [C, S, S] (keeps the spatial structure an MLP loses)."""

    def __init__(self, channels: int, side: int, conv_channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.shape = (channels, side, side)
        layers: list[nn.Module] = []
        width = channels
        for c in conv_channels:
            layers += [nn.Conv2d(width, c, kernel_size=3, padding=1), nn.ReLU()]
            width = c
        self.conv = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, out_dim), nn.ReLU())

    def forward(self, window: Tensor) -> Tensor:
        """window [N, C*S*S] -> [N, out_dim]."""
        return self.out(self.conv(window.reshape(window.shape[0], *self.shape)))


class RecurrentQNetwork(nn.Module):
    """R2D2 Q-network: encoders -> one LSTM -> Q head.

    Partial view: a CNN over `window`, a small Linear+ReLU encoder per other field (`time` and `progress`
    share one), all concatenated into the LSTM input. Full view (or a bare int dim): an MLP over the whole
    vector. `forward(obs [B, T, D], state) -> (q [B, T, A], (h, c))` makes ONE LSTM call over the whole
    sequence; the module stores no hidden state.
    """

    def __init__(
        self,
        layout: ObsLayout | int,
        num_actions: int = 5,
        hidden_size: int = 256,
        lstm_layers: int = 1,
        cnn_channels: Sequence[int] = (16, 32),
        window_dim: int = 128,
        field_dim: int = 32,
        encoder_hidden: Sequence[int] = (256,),
        head_hidden: int | None = 256,
        dueling: bool = False,
        forget_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim_of(layout)
        self.num_actions = num_actions
        self.hidden_size = hidden_size
        self.lstm_layers = lstm_layers
        self.window: WindowEncoder | None = None
        self.window_slice: slice | None = None
        # Groups of contiguous fields, each with its own encoder, in layout order.
        self.group_names: list[str] = []
        self.group_slices: list[slice] = []
        self.encoders = nn.ModuleDict()
        if isinstance(layout, ObsLayout) and layout.is_partial:
            w = layout["window"]
            self.window = WindowEncoder(layout.window_channels, layout.window_side, cnn_channels, window_dim)
            self.window_slice = w.slice
            lstm_in = window_dim
            for field in layout.fields:
                if field.name == "window":
                    continue
                if field.name == "progress" and "time" in self.group_names:
                    i = self.group_names.index("time")
                    # time and progress are adjacent in the layout: widen the time group's slice.
                    self.group_slices[i] = slice(self.group_slices[i].start, field.stop)
                    continue
                self.group_names.append(field.name)
                self.group_slices.append(field.slice)
            for name, sl in zip(self.group_names, self.group_slices, strict=True):
                self.encoders[name] = nn.Sequential(nn.Linear(sl.stop - sl.start, field_dim), nn.ReLU())
                lstm_in += field_dim
        else:
            self.encoders["obs"], lstm_in = mlp(self.obs_dim, encoder_hidden)
            self.group_names.append("obs")
            self.group_slices.append(slice(0, self.obs_dim))
        self.lstm_input_size = lstm_in
        self.lstm = nn.LSTM(lstm_in, hidden_size, num_layers=lstm_layers, batch_first=True)
        with torch.no_grad():  # a forget-gate bias > 0 keeps memory by default (Jozefowicz et al., 2015)
            for layer in range(lstm_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[hidden_size : 2 * hidden_size].fill_(forget_bias)
                getattr(self.lstm, f"bias_hh_l{layer}")[hidden_size : 2 * hidden_size].zero_()
        self.head = QHead(hidden_size, num_actions, hidden=head_hidden, dueling=dueling)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> LSTMState:
        """Zeros [lstm_layers, batch, hidden_size]: the state at the start of an episode."""
        shape = (self.lstm_layers, batch, self.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def encode(self, obs: Tensor) -> Tensor:
        """obs [N, D] -> LSTM input [N, lstm_input_size]."""
        parts = []
        if self.window is not None and self.window_slice is not None:
            parts.append(self.window(obs[:, self.window_slice]))
        for name, sl in zip(self.group_names, self.group_slices, strict=True):
            parts.append(self.encoders[name](obs[:, sl]))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, obs: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        if obs.dim() != 3 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must be [B, T, {self.obs_dim}], got {list(obs.shape)}")
        b, t, _ = obs.shape
        if state is None:
            state = self.initial_state(b, obs.device)
        x = self.encode(obs.reshape(b * t, -1)).reshape(b, t, -1)
        out, new_state = self.lstm(x, state)
        return self.head(out), new_state
