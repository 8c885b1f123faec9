"""The ahead-of-time compiled world (`World.compile` on the CPU): same trajectories as the eager engine through
everything that can change between steps, programs kept on disk and reused, nothing half-written."""

from __future__ import annotations

import pytest
import torch

from townlet.world import World, aot


def random_valid(world: World, gen: torch.Generator) -> torch.Tensor:
    mask = world.action_mask()
    return (torch.rand(mask.shape, generator=gen) * mask).argmax(1)


def play_both(eager: World, compiled: World, steps: int, gen: torch.Generator) -> None:
    """Step both on the same actions; every output, the lazy infos and the state must be equal."""
    for _ in range(steps):
        actions = random_valid(eager, gen)
        a, b = eager.step(actions), compiled.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            assert torch.equal(x, y)
        assert a[4].keys() == b[4].keys()
        for key in ("done", "terminated", "truncated", "episode_length", "episode_return", "invalid", "completed",
                    "final_obs", "final_mask", "cause"):
            ended = a[4]["done"] if key.startswith("final") else slice(None)
            assert torch.equal(a[4][key][ended], b[4][key][ended]), key
    for name in aot.STATE:
        assert torch.equal(getattr(eager, name), getattr(compiled, name)), name
    assert torch.equal(eager.observe(), compiled.observe())
    assert torch.equal(eager.action_mask(), compiled.action_mask())


N = 32  # every test here uses L2_partial with N agents, so the programs compile once for the module


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aot")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aot, "cache_dir", lambda: folder)
        yield folder


def test_changes_between_steps_reach_the_compiled_step(cache):
    """Seed (a new layout pool), per-agent difficulty and reward modes, random starts and written state are
    inputs of the compiled program, not constants baked into it."""
    eager, compiled = World("L2_partial", N, seed=3), World("L2_partial", N, seed=3, compile=True)
    gen = torch.Generator().manual_seed(0)
    play_both(eager, compiled, 60, gen)
    for world in (eager, compiled):
        world.reset(seed=11)
        world.set_difficulty(depletion=torch.linspace(0.5, 2.0, N), reward_mode=torch.arange(N) % 3)
        world.meters[:, 3] = 0.01  # broke: uses that cost money become invalid
    play_both(eager, compiled, 80, gen)
    for world in (eager, compiled):
        world.set_random_starts(0.5)  # a different traced step (the exploring-start draws)
    play_both(eager, compiled, 120, gen)
    assert compiled.exploring.any()
    assert not any(name.startswith("_traced_") for name in vars(compiled))  # tracing left nothing behind
    assert len(list(cache.glob("step-*.pt2"))) == 2 and len(list(cache.glob("observe-*.pt2"))) == 1


def test_held_outputs_are_never_overwritten(cache):
    world = World("L2_partial", N, seed=0, compile=True)
    gen = torch.Generator().manual_seed(2)
    held = []
    for _ in range(20):
        obs, reward, *_ = world.step(random_valid(world, gen))
        held.append((obs, obs.clone(), reward, reward.clone()))
    assert all(torch.equal(a, b) and torch.equal(r, s) for a, b, r, s in held)


def no_compiling(*args, **kwargs):
    raise AssertionError("compiled again")


def test_a_compiled_program_is_loaded_from_disk_by_the_next_world(cache, monkeypatch):
    World("L2_partial", N, seed=0, compile=True).step(torch.zeros(N, dtype=torch.long))  # compiled, or on disk
    kept = sorted(p.name for p in cache.iterdir())
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiling)
    eager, second = World("L2_partial", N, seed=5), World("L2_partial", N, seed=5, compile=True)
    play_both(eager, second, 30, torch.Generator().manual_seed(1))
    assert sorted(p.name for p in cache.iterdir()) == kept
    with pytest.raises(AssertionError, match="compiled again"):  # another size is another program
        World("L2_partial", N + 1, seed=0, compile=True)


def test_a_failed_compile_leaves_no_file(cache, monkeypatch):
    def dies_half_way(exported, package_path):
        with open(package_path, "wb") as f:
            f.write(b"half a package")
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", dies_half_way)
    before = sorted(cache.iterdir())
    with pytest.raises(RuntimeError, match="compiler crashed"):  # the first observation compiles
        World("L2_partial", N + 2, seed=0, compile=True)
    assert sorted(cache.iterdir()) == before
