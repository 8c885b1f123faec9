"""Episodic novelty (the episodic half of NGU, Badia et al. 2020) in its simplest exact form: per-agent visit
counts that start afresh with each of that agent's episodes, and a bonus of 1 / sqrt(n) for the n-th visit.

Run-long counts (`VisitCounts`) stop paying once a place is familiar to the population; an episodic count keeps
paying, every episode, for reaching places the agent has not been to *yet this episode*, so it rewards covering
the map within a life rather than only the first time anyone covers it. NGU approximates the count with a
k-nearest-neighbour kernel over learned embeddings; on a small grid the state is known, so the count is exact.

A key is the agent's cell, optionally times which meters are low (one bit per meter below `low_meter`, as in
`VisitCounts`), so that reaching the Job while broke is novel even after passing it while rich. Counts live in
an [N, K] tensor on `device`; nothing synchronises with the host.

Each count is stamped with the episode it belongs to, so ending an episode costs O(1) per agent (its episode
number goes up and its old counts read as 0) instead of clearing its row of K counts (16,384 with the low
meters): a clear on every step is a pass over the whole [N, K] table.
"""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.world import World
from townlet.world.config import METER_NAMES

DEFAULT_MAX_KEYS = 1 << 14  # per agent: an 8x8 grid with all 8 low-meter bits fits exactly
_HASH_MULT = 2654435761  # Knuth's multiplicative hash constant (odd, ~2^32 / golden ratio)
_HASH_BITS = 32


class EpisodicCounts:
    """Each agent's visit count of each key within its current episode; `bonus` counts this visit and pays
    1 / sqrt(n), `reset(done)` forgets the episodes that ended, `visits()` reads the counts.

    K = grid_size² cells, times 2^len(METER_NAMES) when `low_meter` is set. If that exceeds `max_keys`, keys are
    hashed into `max_keys` slots (a power of two) with Knuth's multiplicative hash, the top bits of
    (key * 2654435761) mod 2^32; two keys sharing a slot then share a count (a count can only be too high, so
    the bonus errs towards "familiar"). `exact` says which one applies.
    """

    def __init__(self, num_agents: int, grid_size: int, low_meter: float | None = None,
                 max_keys: int = DEFAULT_MAX_KEYS, device: str | torch.device = "cpu") -> None:
        if num_agents < 1:
            raise ValueError(f"EpisodicCounts: num_agents must be >= 1, got {num_agents}")
        if max_keys < 1 or max_keys & (max_keys - 1) or max_keys > 1 << _HASH_BITS:
            raise ValueError(f"EpisodicCounts: max_keys must be a power of two in [1, 2^32], got {max_keys}")
        self.num_agents, self.grid_size, self.low_meter = num_agents, grid_size, low_meter
        self.meter_bits = len(METER_NAMES) if low_meter is not None else 0
        self.num_keys = (grid_size * grid_size) << self.meter_bits  # distinct keys before any hashing
        self.exact = self.num_keys <= max_keys
        size = self.num_keys if self.exact else max_keys
        self._shift = _HASH_BITS - (max_keys.bit_length() - 1)
        self.device = torch.device(device)
        # counts[i, k] is agent i's count of key k in its episode stamps[i, k]; it counts only while that is
        # the agent's current episode, episode[i]
        self.counts = torch.zeros(num_agents, size, dtype=torch.int32, device=self.device)
        self.stamps = torch.zeros(num_agents, size, dtype=torch.int32, device=self.device)
        self.episode = torch.zeros(num_agents, dtype=torch.int32, device=self.device)
        self._bits = 1 << torch.arange(self.meter_bits, device=self.device)
        self._rows = torch.arange(num_agents, device=self.device)

    def keys(self, world: World) -> Tensor:
        """Slot of each agent's (cell, low meters) in `world` now: [N] int64 in [0, K)."""
        if world.num_agents != self.num_agents:
            raise ValueError(f"EpisodicCounts: world has {world.num_agents} agents, counts were built for "
                             f"{self.num_agents}")
        key = world.positions[:, 1] * self.grid_size + world.positions[:, 0]
        if self.meter_bits:
            low = ((world.meters < self.low_meter).long() * self._bits).sum(dim=1)
            key = (key << self.meter_bits) + low
        if self.exact:
            return key
        return ((key * _HASH_MULT) & ((1 << _HASH_BITS) - 1)) >> self._shift

    def bonus(self, world: World) -> Tensor:
        """Count each agent's current key once more, then return 1 / sqrt(n) of it: [N] float32 (1 on the
        first visit of an episode, 1/sqrt(2) on the second, ...). Call it once per step, e.g. on arrival."""
        slot = self._rows * self.counts.shape[1] + self.keys(world)  # one slot per agent: no duplicates
        counts, stamps = self.counts.view(-1), self.stamps.view(-1)
        this_episode = stamps.index_select(0, slot) == self.episode
        n = torch.where(this_episode, counts.index_select(0, slot) + 1, 1)
        counts.index_copy_(0, slot, n)
        stamps.index_copy_(0, slot, self.episode)
        return n.float().rsqrt()

    def reset(self, done: Tensor) -> None:
        """Forget the counts of the agents whose episode ended (done [N] bool); the others keep theirs."""
        if done.shape != (self.num_agents,):
            raise ValueError(f"EpisodicCounts.reset: done must have shape ({self.num_agents},), "
                             f"got {tuple(done.shape)}")
        self.episode += done.to(self.device, torch.int32)

    def visits(self) -> Tensor:
        """[N, K] int32: each agent's count of each key in its current episode."""
        return torch.where(self.stamps == self.episode.unsqueeze(1), self.counts, 0)

    def state_dict(self) -> dict[str, Tensor]:
        return {"counts": self.counts.clone(), "stamps": self.stamps.clone(), "episode": self.episode.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Also takes the state of earlier versions, which kept only the current episodes' counts (`counts`)."""
        counts = state["counts"]
        if counts.shape != self.counts.shape:
            raise ValueError(f"EpisodicCounts state: expected counts of shape {tuple(self.counts.shape)}, "
                             f"got {tuple(counts.shape)}")
        self.counts.copy_(counts)
        if "stamps" in state:
            self.stamps.copy_(state["stamps"])
            self.episode.copy_(state["episode"])
        else:  # every count belongs to episode 0, the agents' current one
            self.stamps.zero_()
            self.episode.zero_()
