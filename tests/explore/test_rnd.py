"""RND: novelty falls where the predictor trained and stays high elsewhere, it scores next_obs, running
statistics are exact, rewards are scale-normalised, and checkpoints resume bit-exactly."""

from __future__ import annotations

import io

import pytest
import torch

from townlet.explore import RND, RunningMeanStd
from townlet.replay import TransitionReplay
from townlet.world import World

FAMILIAR = [(0, 0), (1, 0), (2, 1), (3, 3)]
NOVEL = [(7, 7), (6, 5), (4, 6), (5, 2)]


def cell_obs(cells: list[tuple[int, int]], repeat: int = 1) -> torch.Tensor:
    """Real L1_full first observations of agents placed on `cells` (x, y), each `repeat` times: [len * repeat, D]."""
    positions = torch.tensor(cells * repeat)
    world = World("L1_full", len(positions), seed=0)
    return world.reset(positions=positions)


@pytest.fixture(scope="module")
def familiar() -> torch.Tensor:
    return cell_obs(FAMILIAR, repeat=16)  # [64, D]


@pytest.fixture(scope="module")
def novel() -> torch.Tensor:
    return cell_obs(NOVEL)


def trained_rnd(
    familiar: torch.Tensor, updates: int = 150, stats_from: torch.Tensor | None = None
) -> tuple[RND, torch.Tensor]:
    """An RND whose statistics saw `stats_from` (default: the familiar states), then `updates` predictor steps
    on the familiar states; also returns the familiar rewards measured before training (same statistics, so
    only the predictor changed)."""
    rnd = RND(familiar.shape[1], hidden=64, embed=32, lr=1e-3, seed=0)
    for _ in range(5):
        rnd.reward(familiar if stats_from is None else stats_from)
    before = rnd.reward(familiar, update_stats=False)
    for _ in range(updates):
        rnd.update(familiar)
    return rnd, before


@pytest.mark.parametrize("stats_from", ["familiar", "every cell"])
def test_novelty_falls_for_familiar_states_and_stays_high_for_new_ones(familiar, novel, stats_from) -> None:
    """With statistics from the familiar states only, novel cells also stand out after normalisation (their
    one-hot entries were always 0); with statistics from every cell, only the predictor tells them apart."""
    every_cell = cell_obs([(x, y) for y in range(8) for x in range(8)])
    rnd, before = trained_rnd(familiar, stats_from=None if stats_from == "familiar" else every_cell)
    target = [p.clone() for p in rnd.target.parameters()]
    after = rnd.reward(familiar, update_stats=False)
    new = rnd.reward(novel, update_stats=False)
    assert after.shape == (64,) and new.shape == (4,)
    assert (after >= 0).all() and (new >= 0).all()
    assert after.mean() < 1e-2 * before.mean()  # the familiar states became predictable
    assert new.min() > 100 * after.max()  # every novel state is far more surprising than any familiar one
    rnd.update(familiar)
    assert all(torch.equal(a, b) for a, b in zip(target, rnd.target.parameters(), strict=True))  # target fixed
    assert not any(p.requires_grad for p in rnd.target.parameters())


def test_reward_scores_the_next_observation(familiar, novel) -> None:
    rnd, _ = trained_rnd(familiar)
    fam, new = familiar[:4], novel
    into_novel = rnd.reward(new, update_stats=False)  # transitions familiar -> novel
    into_familiar = rnd.reward(fam, update_stats=False)  # transitions novel -> familiar
    assert into_novel.min() > 20 * into_familiar.max()
    # through the replay: the stored intrinsic reward of a transition is the reward of its next_obs
    buf = TransitionReplay(8, 4, fam.shape[1], n_step=1)
    mask = torch.ones(4, 5, dtype=torch.bool)
    flags = torch.zeros(4, dtype=torch.bool)
    zeros, actions = torch.zeros(4), torch.zeros(4, dtype=torch.int64)
    buf.add(fam, mask, actions, zeros, new, mask, flags, flags, intrinsic=rnd.reward(new, update_stats=False))
    buf.add(new, mask, actions, zeros, fam, mask, flags, flags, intrinsic=rnd.reward(fam, update_stats=False))
    batch = buf.sample(32, torch.Generator().manual_seed(0))
    assert torch.allclose(batch.intrinsic, rnd.reward(batch.next_obs, update_stats=False))
    assert not torch.allclose(batch.intrinsic, rnd.reward(batch.obs, update_stats=False))
    out_of_familiar = batch.indices < 4  # first row: obs familiar, next_obs novel
    assert out_of_familiar.any() and (~out_of_familiar).any()
    assert batch.intrinsic[out_of_familiar].min() > 20 * batch.intrinsic[~out_of_familiar].max()


def test_running_mean_std_matches_the_whole_data() -> None:
    gen = torch.Generator().manual_seed(0)
    rms = RunningMeanStd((3,))
    chunks = [torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -3.0, 0.0])
              for n in (1, 7, 100, 3, 250)]
    for chunk in chunks:
        rms.update(chunk)
    data = torch.cat(chunks).double()
    var, mean = torch.var_mean(data, dim=0, correction=0)
    assert torch.allclose(rms.mean.double(), mean, atol=1e-5)
    assert torch.allclose(rms.var.double(), var, rtol=1e-5, atol=1e-6)  # the tiny prior (var 1, count 1e-4)
    assert torch.allclose(rms.std, var.sqrt().float(), rtol=1e-4)
    assert rms.count.item() == pytest.approx(361, abs=1e-3)
    other = RunningMeanStd((3,))
    other.load_state_dict(rms.state_dict())
    assert torch.equal(other.mean, rms.mean) and torch.equal(other.var, rms.var)
    with pytest.raises(ValueError, match="expected"):
        rms.update(torch.zeros(4, 2))


def test_observation_statistics_converge_and_rewards_have_unit_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    mu, sigma = torch.tensor([3.0, -1.0, 0.0, 10.0]), torch.tensor([0.5, 2.0, 1.0, 4.0])
    rnd = RND(4, hidden=32, embed=16, seed=0)
    rewards = [rnd.reward(torch.randn(128, 4, generator=gen) * sigma + mu) for _ in range(300)]
    assert torch.allclose(rnd.obs_rms.mean, mu, atol=0.05)
    assert torch.allclose(rnd.obs_rms.std, sigma, rtol=0.03)
    late = torch.cat(rewards[100:])
    assert late.std().item() == pytest.approx(1.0, abs=0.1)
    assert (late >= 0).all()  # scaled, not centred: novelty stays a bonus


def test_rewards_are_invariant_to_the_scale_of_the_errors(familiar) -> None:
    """Scaling the target's output by 10 scales raw errors by ~100 but not the normalised rewards."""
    a = RND(familiar.shape[1], hidden=32, embed=16, seed=3)
    b = RND(familiar.shape[1], hidden=32, embed=16, seed=3)
    with torch.no_grad():
        for net in (b.target, b.predictor):
            net[-1].weight.mul_(10.0)
    for _ in range(20):
        ra, rb = a.reward(familiar), b.reward(familiar)
    assert b.novelty(familiar).mean() > 50 * a.novelty(familiar).mean()
    assert torch.allclose(ra, rb, rtol=1e-3)


def test_update_uses_a_prefix_proportion_and_returns_a_detached_loss(familiar) -> None:
    full = RND(familiar.shape[1], hidden=32, embed=16, seed=0)
    quarter = RND(familiar.shape[1], hidden=32, embed=16, seed=0, update_proportion=0.25)
    stats = quarter.update(familiar)
    assert set(stats) == {"loss"} and not stats["loss"].requires_grad and stats["loss"].dim() == 0
    full.update(familiar[:16])
    for p, q in zip(full.predictor.parameters(), quarter.predictor.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_round_trip_reproduces_rewards_and_updates(familiar, novel) -> None:
    a, _ = trained_rnd(familiar, updates=10)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = RND(familiar.shape[1], hidden=64, embed=32, lr=1e-3, seed=99)  # different init, overwritten
    b.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        assert torch.equal(a.reward(novel), b.reward(novel))
        assert torch.equal(a.update(familiar)["loss"], b.update(familiar)["loss"])
    assert torch.equal(a.reward(familiar), b.reward(familiar))
    assert torch.equal(a.obs_rms.var, b.obs_rms.var) and torch.equal(a.reward_rms.count, b.reward_rms.count)


def test_construction_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = RND(6, seed=1), RND(6, seed=1), RND(6, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.novelty(x), b.novelty(x))
    assert not torch.equal(a.novelty(x), c.novelty(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"hidden": 0}, "hidden"), ({"lr": 0.0}, "lr"), ({"update_proportion": 0.0}, "update_proportion")],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RND(4, **kwargs)
    with pytest.raises(ValueError, match="next_obs"):
        RND(4).reward(torch.zeros(3, 5))
