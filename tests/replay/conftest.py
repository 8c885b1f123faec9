"""Hand-constructed agent streams whose every value identifies its step, agent and kind (obs / final obs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor

from townlet.world.config import load_level
from townlet.world.observation import ObsLayout

NUM_ACTIONS = 5


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
    ]
)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def l2_layout() -> ObsLayout:
    return ObsLayout.for_level(load_level("L2_partial"))


@pytest.fixture(scope="session")
def stream_factory():
    """Tests build streams through this fixture (importing from conftest is fragile)."""
    return _make_stream


@pytest.fixture(scope="session")
def obs_factory():
    return _make_obs


def _make_obs(t: int, num_envs: int, spec: ObsLayout | int, *, final: bool = False) -> Tensor:
    """[N, D] obs of step t: float fields encode (t, env, final); discrete fields hold a -1/0/1 pattern."""
    dim = spec.dim if isinstance(spec, ObsLayout) else spec
    env = torch.arange(num_envs, dtype=torch.float32).unsqueeze(1)
    col = torch.arange(dim, dtype=torch.float32)
    out = t * 1000.0 + env * 10.0 + col / 1000.0 + (0.5 if final else 0.0)
    if isinstance(spec, ObsLayout):
        pattern = (t + 2 * env + col + (1 if final else 0)).remainder(3) - 1
        for f in spec.fields:
            if f.discrete:
                out[:, f.slice] = pattern[:, f.slice]
    return out


def _make_mask(t: int, num_envs: int) -> Tensor:
    """A non-empty, non-full action mask varying with (t, env); a final mask is its complement."""
    code = (torch.arange(num_envs) * 7 + t * 3) % 30 + 1
    return (code.unsqueeze(1) >> torch.arange(NUM_ACTIONS)) & 1 == 1


@dataclass
class Stream:
    """Per-step tensors of a world run with auto-reset: lists indexed by global step."""

    num_envs: int
    spec: ObsLayout | int
    steps: list[dict[str, Tensor]] = field(default_factory=list)

    def transition_args(self, t: int) -> dict[str, Tensor]:
        s = self.steps[t]
        keys = ("obs", "mask", "actions", "rewards", "next_obs", "next_mask", "terminated", "truncated")
        return {k: s[k] for k in keys}

    def sequence_args(self, t: int) -> dict[str, Tensor]:
        s = self.steps[t]
        keys = ("obs", "mask", "actions", "rewards", "terminated", "truncated", "final_obs", "final_mask")
        return {**{k: s[k] for k in keys}, "h": s["h"], "c": s["c"]}


def _make_stream(
    length: int,
    num_envs: int,
    spec: ObsLayout | int,
    *,
    terminated: set[tuple[int, int]] = frozenset(),
    truncated: set[tuple[int, int]] = frozenset(),
    layers: int = 1,
    hidden: int = 3,
) -> Stream:
    """`length` steps; (t, env) in `terminated`/`truncated` ends that agent's episode at step t.

    reward[t, env] = t + 1 + 100 * env; intrinsic[t, env] = -(t + 1) / 4 - env / 8 (exact in float32);
    action = (t + env) % 5; h = t * 100 + env + layer / 2 (+ k / 1000), c = -h.
    """
    stream = Stream(num_envs, spec)
    envs = torch.arange(num_envs)
    for t in range(length + 1):
        term = torch.tensor([(t, j) in terminated for j in range(num_envs)])
        trunc = torch.tensor([(t, j) in truncated for j in range(num_envs)])
        h = (
            t * 100.0
            + envs.view(1, -1, 1).float()
            + torch.arange(layers).view(-1, 1, 1) / 2
            + torch.arange(hidden).view(1, 1, -1) / 1000
        )
        stream.steps.append(
            {
                "obs": _make_obs(t, num_envs, spec),
                "mask": _make_mask(t, num_envs),
                "actions": (t + envs) % NUM_ACTIONS,
                "rewards": (t + 1 + 100 * envs).float(),
                "intrinsic": -(t + 1) / 4 - envs.float() / 8,
                "terminated": term,
                "truncated": trunc,
                "final_obs": _make_obs(t, num_envs, spec, final=True),
                "final_mask": ~_make_mask(t, num_envs),
                "h": h,
                "c": -h,
            }
        )
    for t in range(length):
        s, nxt = stream.steps[t], stream.steps[t + 1]
        done = (s["terminated"] | s["truncated"]).unsqueeze(1)
        s["next_obs"] = torch.where(done, s["final_obs"], nxt["obs"])
        s["next_mask"] = torch.where(done, s["final_mask"], nxt["mask"])
    stream.steps.pop()  # the extra step only provided next observations
    return stream
