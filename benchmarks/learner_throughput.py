"""Learner throughput: updates/s of the DQN (MLP) and R2D2 (recurrent) learners, each against a plain
forward+backward of the same network on the same batch, measured in the same run.

    .venv/bin/python benchmarks/learner_throughput.py [--repeats 7] [--seconds 1.0] [--device cpu]

DQN: batch 256 transitions, L1_full layout, QNetwork (256, 256). R2D2: batch 32 sequences of 8 burn-in + 16
training steps, L2_partial layout, LSTM 256. A learner update = targets (online + target nets on the next
obs / whole sequence) + loss + backward + gradient clipping + Adam + target schedule. The baseline is one
forward with gradient over what the update trains on (DQN: obs; R2D2: the whole T + 1 sequence from the
stored state) + backward, with no target computation and no optimizer step. Batches are random tensors
in the replay format (replay sampling is not timed). Figures are medians over `--repeats` timed blocks.
The last line times the R2D2 update with continuations (`replay.split_episodes`) against the plain update.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from townlet.agents import QNetwork, RecurrentQNetwork
from townlet.learn import DQNConfig, DQNLearner, R2D2Config, RecurrentLearner
from townlet.world.config import load_level
from townlet.world.observation import ObsLayout


@dataclass
class TransitionBatch:
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    next_mask: Tensor
    terminated: Tensor
    truncated: Tensor
    steps: Tensor
    weights: Tensor


@dataclass
class SequenceBatch:
    obs: Tensor
    masks: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    valid: Tensor
    h0: Tensor
    c0: Tensor
    weights: Tensor
    continuation: SequenceBatch | None = None
    start: Tensor | None = None
    demo: Tensor | None = None
    advice: Tensor | None = None


def random_obs(layout: ObsLayout, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Observations with the layout's value ranges: 0/1 in discrete fields, [0, 1) floats elsewhere."""
    obs = torch.rand(*shape, layout.dim, generator=g)
    for f in layout.fields:
        if f.discrete:
            obs[..., f.slice] = (obs[..., f.slice] < 0.1).float()
    return obs


def transition_batch(layout: ObsLayout, b: int, g: torch.Generator, device: torch.device) -> TransitionBatch:
    batch = TransitionBatch(
        obs=random_obs(layout, (b,), g),
        actions=torch.randint(0, 5, (b,), generator=g),
        rewards=torch.randn(b, generator=g),
        next_obs=random_obs(layout, (b,), g),
        next_mask=torch.rand(b, 5, generator=g) < 0.8,
        terminated=torch.rand(b, generator=g) < 0.01,
        truncated=torch.zeros(b, dtype=torch.bool),
        steps=torch.ones(b, dtype=torch.long),
        weights=torch.ones(b),
    )
    return TransitionBatch(**{k: v.to(device) for k, v in vars(batch).items()})


def sequence_batch(
    layout: ObsLayout, b: int, t: int, hidden: int, g: torch.Generator, device: torch.device
) -> SequenceBatch:
    terminated = torch.zeros(b, t, dtype=torch.bool)
    terminated[0, t - 3] = True  # one episode end, so the masking path is exercised
    batch = SequenceBatch(
        obs=random_obs(layout, (b, t + 1), g),
        masks=torch.rand(b, t + 1, 5, generator=g) < 0.8,
        actions=torch.randint(0, 5, (b, t), generator=g),
        rewards=torch.randn(b, t, generator=g),
        terminated=terminated,
        truncated=torch.zeros(b, t, dtype=torch.bool),
        valid=terminated.cumsum(1) - terminated.long() == 0,
        h0=0.1 * torch.randn(1, b, hidden, generator=g),
        c0=0.1 * torch.randn(1, b, hidden, generator=g),
        weights=torch.ones(b),
    )
    return SequenceBatch(**{k: v.to(device) for k, v in vars(batch).items() if v is not None})


def rate(fn: Callable[[], object], seconds: float, repeats: int, device: torch.device) -> tuple[float, float]:
    """(median calls/s, median ms per call) over `repeats` blocks of about `seconds` each."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds / 4:
        fn()
        n += 1
    sync()
    per_block = max(3, n * 4)  # about `seconds` per block
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per_block):
            fn()
        sync()
        rates.append(per_block / (time.perf_counter() - t0))
    med = statistics.median(rates)
    return med, 1000.0 / med


def plain_step(net: nn.Module, forward: Callable[[], Tensor]) -> Callable[[], None]:
    def step() -> None:
        net.zero_grad(set_to_none=True)
        forward().square().mean().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="approximate length of each timed block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, repeats {args.repeats}")

    # DQN / MLP
    layout = ObsLayout.for_level(load_level("L1_full"))
    net = QNetwork(layout).to(device)
    dqn_config = DQNConfig(
        gamma=0.99, lr=2.5e-4, adam_eps=1e-5, grad_clip=10.0, huber_delta=1.0, double=True,
        target_update_every=1000, tau=None, value_rescale=False,
    )
    dqn = DQNLearner(net, dqn_config)
    tb = transition_batch(layout, 256, g, device)
    upd, upd_ms = rate(lambda: dqn.update(tb), args.seconds, args.repeats, device)
    base, base_ms = rate(plain_step(net, lambda: net(tb.obs)), args.seconds, args.repeats, device)
    print(
        f"DQN  MLP(256,256) L1_full dim {layout.dim}, batch 256: {upd:8.1f} updates/s ({upd_ms:.2f} ms); "
        f"plain fwd+bwd {base:8.1f}/s ({base_ms:.2f} ms); update/baseline time {upd_ms / base_ms:.2f}x"
    )

    # R2D2 / recurrent
    layout = ObsLayout.for_level(load_level("L2_partial"))
    burn_in, train_len, hidden = 8, 16, 256
    rnet = RecurrentQNetwork(layout, hidden_size=hidden).to(device)
    r2d2_config = R2D2Config(
        gamma=0.99, lr=1e-4, adam_eps=1e-3, grad_clip=40.0, huber_delta=1.0, double=True,
        target_update_every=2500, tau=None, burn_in=burn_in, n_step=1, stored_state=True,
        imitation_weight=0.0, margin=0.8, value_rescale=False,
    )
    r2d2 = RecurrentLearner(rnet, r2d2_config)
    sb = sequence_batch(layout, 32, burn_in + train_len, hidden, g, device)
    upd, upd_ms = rate(lambda: r2d2.update(sb), args.seconds, args.repeats, device)
    base, base_ms = rate(plain_step(rnet, lambda: rnet(sb.obs, (sb.h0, sb.c0))[0]), args.seconds, args.repeats, device)
    params = sum(p.numel() for p in rnet.parameters())
    print(
        f"R2D2 LSTM {hidden} L2_partial dim {layout.dim} ({params / 1e6:.2f} M params), batch 32 x "
        f"({burn_in} + {train_len}): {upd:8.1f} updates/s ({upd_ms:.2f} ms); plain fwd+bwd over the "
        f"{burn_in + train_len + 1} steps {base:8.1f}/s ({base_ms:.2f} ms); "
        f"update/baseline time {upd_ms / base_ms:.2f}x"
    )

    # R2D2 with continuations (replay.split_episodes): the same batch, and a continuation of the same shape
    # from a zero state (row 0 ends at step T - 3, the others run on; the cost does not depend on where)
    t = burn_in + train_len
    start = torch.full((32,), t, dtype=torch.long, device=device)
    start[0] = t - 2
    zeros = torch.zeros_like(sb.h0)
    split = replace(sb, continuation=replace(sb, h0=zeros, c0=zeros, start=start))
    split_upd, split_ms = rate(lambda: r2d2.update(split), args.seconds, args.repeats, device)
    print(
        f"R2D2 with continuations, same batch: {split_upd:8.1f} updates/s ({split_ms:.2f} ms); "
        f"update with / without continuations time {split_ms / upd_ms:.2f}x"
    )


if __name__ == "__main__":
    main()
