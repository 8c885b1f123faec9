"""The intrinsic-reward weight, annealed once the agents survive consistently long.

Curiosity is turned down only when episode lengths are both stable (low variance) and long (high mean), so
agents that consistently die early (stable but short) keep their curiosity.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from torch import Tensor


class IntrinsicAnnealing:
    """Weight of the intrinsic reward, multiplied by `decay` while performance has converged.

    `observe(lengths)` appends finished episodes' lengths (ticks survived) to a window of the last `window`
    episodes. After appending, if the window is full and BOTH its (population) variance is below
    `variance_threshold` (ticks squared) AND its mean exceeds `min_survival_fraction * max_steps`, the weight
    is multiplied by `decay` once, never going below `floor`. So the decay is per qualifying `observe` call
    (not per episode, not per step): calls with no finished episodes never decay, and the decay rate per
    wall-clock step scales with how often episodes finish and the runner calls `observe`.
    """

    def __init__(
        self,
        initial: float = 1.0,
        decay: float = 0.99,
        window: int = 100,
        variance_threshold: float = 100.0,
        min_survival_fraction: float = 0.5,
        max_steps: int = 500,
        floor: float = 0.0,
    ) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay: expected a factor in (0, 1], got {decay}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window: expected an int >= 2 (a variance needs two episodes), got {window!r}")
        if variance_threshold < 0 or min_survival_fraction < 0 or max_steps < 1:
            raise ValueError("variance_threshold and min_survival_fraction must be >= 0 and max_steps >= 1")
        if not 0.0 <= floor <= initial:
            raise ValueError(f"expected 0 <= floor <= initial, got floor={floor}, initial={initial}")
        self.initial, self.decay, self.window = float(initial), float(decay), window
        self.variance_threshold = float(variance_threshold)
        self.min_survival_fraction, self.max_steps = float(min_survival_fraction), max_steps
        self.floor = float(floor)
        self._weight = self.initial
        self._lengths: deque[float] = deque(maxlen=window)
        self.decays = 0  # qualifying observe calls so far

    @property
    def weight(self) -> float:
        """The current intrinsic-reward weight."""
        return self._weight

    @property
    def full(self) -> bool:
        return len(self._lengths) == self.window

    @property
    def mean(self) -> float:
        """Mean episode length over the window (nan while empty)."""
        n = len(self._lengths)
        return sum(self._lengths) / n if n else float("nan")

    @property
    def variance(self) -> float:
        """Population variance of the window's episode lengths (nan while empty)."""
        n = len(self._lengths)
        if not n:
            return float("nan")
        mean = self.mean
        return sum((x - mean) ** 2 for x in self._lengths) / n

    def converged(self) -> bool:
        """The decay rule: window full, variance below the threshold and mean survival long enough."""
        return (
            self.full
            and self.variance < self.variance_threshold
            and self.mean > self.min_survival_fraction * self.max_steps
        )

    def observe(self, lengths: Tensor | Sequence[int]) -> float:
        """Feed the lengths of episodes that just finished (any number, possibly none); returns the weight.

        A tensor is copied to the host (one sync): call this where episode stats are read anyway.
        """
        values = lengths.detach().flatten().tolist() if isinstance(lengths, Tensor) else list(lengths)
        if not values:
            return self._weight
        self._lengths.extend(float(v) for v in values)
        if self.converged():
            self._weight = max(self.floor, self._weight * self.decay)
            self.decays += 1
        return self._weight

    def end_interval(self, lengths: Sequence[int], intrinsic_total: Tensor, steps: int) -> dict[str, float]:
        """`observe` a log interval's finished episodes (fed per interval of env steps, a resumed run anneals
        exactly like an uninterrupted one); returns the metrics row's columns: the weight, and the interval's
        intrinsic reward per agent-step (`intrinsic_total` over `steps`)."""
        self.observe(lengths)
        return {"intrinsic_weight": self._weight, "intrinsic_reward": float(intrinsic_total) / max(steps, 1)}

    def state_dict(self) -> dict[str, object]:
        """Weight, window contents and decay count as plain Python values."""
        return {"weight": self._weight, "lengths": list(self._lengths), "decays": self.decays}

    def load_state_dict(self, state: dict[str, object]) -> None:
        lengths = state["lengths"]
        if isinstance(lengths, Tensor):
            lengths = lengths.tolist()
        self._weight = float(state["weight"])  # type: ignore[arg-type]
        self._lengths = deque((float(v) for v in lengths), maxlen=self.window)  # type: ignore[union-attr]
        self.decays = int(state.get("decays", 0))  # type: ignore[call-overload]

