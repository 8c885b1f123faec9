"""The training loop's contract: exact resume, checkpoints that survive crashes, clean stops, metrics."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from townlet.cli import app
from townlet.explore import agent_epsilons
from townlet.train import Trainer, load_run_config, parse_overrides
from townlet.train.checkpoint import FORMAT, CheckpointError, atomic_write, load_checkpoint
from townlet.train.config import load_run_config_data
from townlet.train.metrics import read_metrics
from townlet.train.rundir import list_checkpoints, load_latest, save_checkpoint
from townlet.world import NUM_ACTIONS, ConfigError

SMALL = {
    "agents": 8,
    "compile_world": False,
    "learner": {"learning_starts": 400, "batch_size": 32, "replay_ratio": 1.0, "target_update_every": 50},
    "replay": {"capacity": 4000},
    "exploration": {"decay_steps": 2000},
    "logging": {"interval_steps": 800, "checkpoint_every": 1600, "tensorboard": False},
}
RECURRENT = {
    "network": {"kind": "lstm", "lstm_hidden": 16},
    "replay": {"capacity": 4000, "burn_in": 2, "train_len": 4, "stride": 2},
    "learner": {"learning_starts": 400, "batch_size": 4, "replay_ratio": 1.0, "target_update_every": 50},
}


PPO_SMALL = {
    "algorithm": "ppo",
    "network": {"kind": "lstm", "hidden": [32], "lstm_hidden": 16},
    "ppo": {"rollout_len": 16, "minibatches": 2},
}


def small_config(level: str = "L0_minimal", steps: int = 4000, **extra: object):
    if extra.get("algorithm") == "ppo":  # on-policy: none of the level file's (or SMALL's) Q-learning fields apply
        base = {k: v for k, v in SMALL.items() if k not in ("learner", "replay", "exploration")}
        return load_run_config_data({"level": level, **base, "steps": steps, **extra}, "test")
    overrides = {**SMALL, "steps": steps, **extra}
    return load_run_config(level, overrides)

FROM_REWARD = {  # the teacher-free exploration aids: εz-greedy repeats, episodic counts, rescaled values
    **RECURRENT,
    "learner": {**RECURRENT["learner"], "value_rescale": True},
    "exploration": {"start": 1.0, "end": 0.3, "decay_steps": 2000, "repeat_mu": 2.0},
    "curiosity": {"enabled": True, "kind": "episodic", "weight": 0.1},
    "guides": {"fraction": 0.0},
}


def learner_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("wall_s", "steps_per_s")} for row in read_metrics(run_dir)[1]]


LR_DECAY = {"learner": {**SMALL["learner"], "lr": 1e-3, "lr_end": 1e-4, "lr_decay_steps": 4000}}
EXPLORING = {
    **RECURRENT,
    "exploring_starts": {"probability": 0.5},
    "exploration": {"start": 1.0, "end": 0.4, "decay_steps": 2000, "spread": 7.0},
}


@pytest.mark.parametrize(
    ("level", "extra"),
    [("L0_minimal", {}), ("L2_partial_fixed", RECURRENT), ("L0_minimal", LR_DECAY), ("L2_partial_fixed", EXPLORING),
     ("L2_partial", {**RECURRENT, "guides": {"fraction": 0.25, "policy": "needs-memory"},
                     "replay": {**RECURRENT["replay"], "split_episodes": True}}),
     ("L2_partial_fixed", PPO_SMALL), ("L2_partial_fixed", FROM_REWARD),
     ("L2_partial_fixed", {**PPO_SMALL, "curiosity": {"enabled": True, "kind": "episodic", "weight": 0.1}})],
)
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, level, extra):
    full = Trainer(small_config(level, 4800, **extra), tmp_path / "full")
    full.run()
    part = Trainer(small_config(level, 2400, **extra), tmp_path / "part")
    part.run()
    resumed = Trainer.resume(tmp_path / "part", {"steps": 4800})
    assert resumed.resumed_at == resumed.env_steps == 2400
    resumed.run()
    assert resumed.algorithm.learner.updates == full.algorithm.learner.updates > 0
    for a, b in zip(full.algorithm.network.state_dict().values(), resumed.algorithm.network.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    if hasattr(full.algorithm.learner, "target"):  # PPO has no target network
        for a, b in zip(full.algorithm.learner.target.state_dict().values(),
                        resumed.algorithm.learner.target.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    episodes_full, _ = read_metrics(tmp_path / "full")
    episodes_resumed, _ = read_metrics(tmp_path / "part")
    assert episodes_full == episodes_resumed and len(episodes_full) > 20
    assert learner_rows(tmp_path / "full") == learner_rows(tmp_path / "part")


def test_run_config_reaches_the_world_and_the_exploration(tmp_path):
    """compile_world, exploring starts and the per-agent ε spread are applied where they act."""
    config = small_config(
        "L0_minimal", agents=200, compile_world=True, exploring_starts={"probability": 0.3},
        exploration={"start": 0.5, "end": 0.5, "decay_steps": 10, "spread": 7.0},
    )
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.world._step_fn is not trainer.world._advance  # compiled (lazily, on the first step)
    assert torch.all(trainer.world.random_starts == 0.3)
    assert torch.all(Trainer(small_config("L0_minimal"), tmp_path / "plain").world.random_starts == 0)
    split = {**RECURRENT, "replay": {**RECURRENT["replay"], "split_episodes": True}}
    assert Trainer(small_config("L2_partial_fixed", **split), tmp_path / "split").algorithm.replay.split_episodes
    assert not Trainer(small_config("L2_partial_fixed", **RECURRENT), tmp_path / "masked").algorithm.replay.split_episodes
    trainer.world._step_fn = trainer.world._advance  # the rest of this test needs no compiled step
    explored = torch.zeros(200)
    for _ in range(60):
        with torch.no_grad():
            greedy = trainer.algorithm.network(trainer.obs).masked_fill(~trainer.mask, float("-inf")).argmax(1)
        trainer.collect()
        explored += (trainer.algorithm.replay._actions[(trainer.algorithm.replay._total - 1) % trainer.algorithm.replay.rows].long() != greedy)
    # agent 0 explores at ε = 0.5 (a random valid action differs from the greedy one about half the time), the
    # last at 0.5 ** 8: almost never
    assert explored[:20].mean() > 10 * max(explored[-20:].mean().item(), 0.1)
    # an exploring start's first action is random whatever the agent's ε
    world = trainer.world
    world.exploring = torch.arange(200) % 2 == 0
    world.steps = torch.where(torch.arange(200) < 100, 0, 5)
    eps = trainer.algorithm.exploration_rates()
    first = world.exploring & (world.steps == 0)
    assert torch.all(eps[first] == 1.0) and first.sum() == 50
    assert torch.allclose(eps[~first], agent_epsilons(0.5, 200, 7.0)[~first])


def test_learning_rate_follows_its_env_step_schedule(tmp_path):
    trainer = Trainer(small_config("L0_minimal", 2000, **LR_DECAY), tmp_path / "run")
    trainer.run()
    lr = trainer.algorithm.learner.optimizer.param_groups[0]["lr"]
    # set before each batch of updates (one update per 4 collect steps of 8 agents here)
    assert lr + 1e-12 >= 1e-3 + (1e-4 - 1e-3) * 2000 / 4000 and lr <= 1e-3 + (1e-4 - 1e-3) * 1960 / 4000
    trainer.config = small_config("L0_minimal", 5000, **LR_DECAY)
    trainer.run()
    assert trainer.algorithm.learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # flat after the decay
    constant = Trainer(small_config("L0_minimal", 1000), tmp_path / "constant")
    constant.run()
    assert constant.algorithm.learner.optimizer.param_groups[0]["lr"] == constant.config.learner.lr


def test_metrics_rows_match_the_run(tmp_path):
    trainer = Trainer(small_config(steps=3200), tmp_path)
    trainer.run()
    episodes, learner = read_metrics(tmp_path)
    assert len(episodes) == trainer.logbook.episodes_done > 0
    assert [row["step"] for row in learner] == [800, 1600, 2400, 3200]
    assert all(row["cause"] in ("energy", "health", "truncated") for row in episodes)
    assert all(1 <= row["length"] <= 500 for row in episodes)
    per_agent = {}
    for row in episodes:  # each agent's episodes are numbered 0, 1, 2, ... in order
        per_agent.setdefault(row["agent"], []).append(row["episode"])
    assert all(ids == list(range(len(ids))) for ids in per_agent.values())
    assert learner[-1]["updates"] == trainer.algorithm.learner.updates
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "level.yaml").exists()


def test_stop_request_writes_a_checkpoint_and_restores_signal_handlers(tmp_path):
    trainer = Trainer(small_config(steps=100_000), tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def stop_soon(progress) -> None:
        if progress.env_steps >= 800:
            os.kill(os.getpid(), signal.SIGTERM)

    path = trainer.run(on_progress=stop_soon, progress_every_s=0.0)
    assert 800 <= trainer.env_steps < 100_000
    assert path.exists() and load_checkpoint(path)["trainer"]["env_steps"] == trainer.env_steps
    assert signal.getsignal(signal.SIGTERM) == before


def test_checkpoints_keep_the_last_k_and_skip_a_corrupt_one(tmp_path):
    for step in (100, 200, 300, 400):
        save_checkpoint(tmp_path, step, {"format": FORMAT, "step": torch.tensor(step)}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"ckpt_{s:012d}.pt" for s in (200, 300, 400)]
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:40])  # truncated, as if the disk filled up
    with pytest.warns(UserWarning, match="skipped unreadable checkpoint"):
        path, state = load_latest(tmp_path)
    assert path.name == "ckpt_000000000300.pt" and int(state["step"]) == 300
    for p in list_checkpoints(tmp_path):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"ckpt_000000000200\.pt"):
        load_latest(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_latest(tmp_path / "empty")


class NotATensor:
    pass


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "ckpt_000000000001.pt"
    torch.save({"format": FORMAT, "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"NotATensor\) other than tensors .* townlet refuses to unpickle") as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)  # not torch's advice to load it unsafely
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no 'format'"):
        load_checkpoint(path)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_bad_overrides_name_the_key_and_what_is_allowed():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["learner.lr"])
    with pytest.raises(ConfigError, match=r"learner\.lrr: unknown field; allowed fields: lr, lr_end, lr_decay_steps"):
        load_run_config("L1_full", parse_overrides(["learner.lrr=0.1"]))
    with pytest.raises(ConfigError, match=r"network\.kind: Input should be 'mlp', 'lstm' or 'feedforward'"):
        load_run_config("L1_full", parse_overrides(["network.kind=transformer"]))
    assert parse_overrides(["learner.lr=1e-3", "agents=32"]) == {"learner": {"lr": 1e-3}, "agents": 32}


def test_run_files_extend_a_level_default_or_another_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("extends: L2_partial\nagents: 32\nlearner: {lr: 0.001}\n")
    (tmp_path / "mine").mkdir()
    mine = tmp_path / "mine" / "run.yaml"
    mine.write_text("extends: ../base.yaml\nlearner: {gamma: 0.9}\n")
    config, default = load_run_config(mine), load_run_config("L2_partial")
    assert config.level == "L2_partial" and config.agents == 32
    assert (config.learner.lr, config.learner.gamma) == (0.001, 0.9)
    assert config.learner.lr_decay_steps == default.learner.lr_decay_steps == 22_000_000  # L2_partial's own
    assert config.replay == default.replay == load_run_config("L2_partial_fixed").replay  # from L2_partial_fixed
    base.write_text("extends: mine/run.yaml\n")
    with pytest.raises(ConfigError, match="extends: cycle"):
        load_run_config(mine)
    mine.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: no such run config file"):
        load_run_config(mine)


def test_every_level_default_learns_from_reward_alone_and_demonstrations_are_opt_in():
    """`townlet train LEVEL` is teacher-free on every packaged level: no agent is guided and nothing is imitated.
    Learning from demonstrations is its own run config (`<level>_demonstrations`), which differs from the
    default only in the guides and in leaving the generic exploration aids off."""
    from importlib import resources

    from townlet.world.config import LEVEL_NAMES

    for level in LEVEL_NAMES:
        config = load_run_config(level)
        assert config.guides.fraction == 0 and config.guides.imitation == 0, level
    for level, policy in (("L2_partial_fixed", "needs"), ("L2_partial", "needs-sweep"), ("L3_temporal", "needs-sweep")):
        free, taught = load_run_config(level), load_run_config(f"{level}_demonstrations")
        assert taught.guides.policy == policy and (taught.guides.fraction > 0 or taught.guides.imitation > 0)
        assert free.learner.value_rescale and free.exploration.repeat_mu == 2.0 and free.curiosity.kind == "episodic"
        assert not taught.learner.value_rescale and taught.exploration.repeat_mu is None
        assert taught.exploration.spread == 0 and taught.exploration.end == 0.02
        assert not taught.curiosity.enabled
        assert taught.curriculum.kind == "static"
        same = {"guides", "curiosity", "exploration", "learner", "curriculum"}
        assert taught.model_dump(exclude=same) == free.model_dump(exclude=same)
        assert taught.learner.model_dump(exclude={"value_rescale"}) == free.learner.model_dump(
            exclude={"value_rescale"})
    names = {p.stem for p in (resources.files("townlet.train") / "configs").iterdir() if p.name.endswith(".yaml")}
    assert set(LEVEL_NAMES) <= names  # every level has a default run config
    # L2_memory is L2_partial's learner, curriculum included, without the episodic exploration bonus
    memory, partial = load_run_config("L2_memory"), load_run_config("L2_partial")
    assert partial.curriculum.kind == memory.curriculum.kind == "adversarial"
    assert partial.curiosity.enabled and not memory.curiosity.enabled
    assert memory.level == "L2_memory"
    assert memory.model_dump(exclude={"level", "curiosity"}) == partial.model_dump(exclude={"level", "curiosity"})


@pytest.mark.parametrize("level", ["L2_partial", "L2_memory"])
def test_partial_view_defaults_start_every_agent_on_the_gentlest_stage(level):
    """The random-layout defaults climb the curriculum from a fifth of the drain, the real game its last stage."""
    from townlet.curriculum import AdversarialCurriculum
    from townlet.train.runner import build_run

    run = build_run(load_run_config(level).model_copy(update={"agents": 4, "compile_world": False}))
    assert isinstance(run.curriculum, AdversarialCurriculum) and (run.curriculum.stage == 0).all()
    assert torch.allclose(run.world.depletion, torch.full((4,), 0.2))


def test_cli_train_resume_and_eval(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    sets = ["--set", "learner.learning_starts=300", "--set", "logging.tensorboard=false",
            "--set", "logging.interval_steps=500", "--set", "replay.capacity=5000", "--set", "guides.fraction=0.5"]
    result = runner.invoke(app, ["train", "L0_minimal", "--steps", "1000", "--agents", "4", "--out", str(run_dir),
                                 "--quiet", *sets])
    assert result.exit_code == 0, result.output
    assert "with 4 agents (2 of them follow the scripted needs-memory policy)" in result.output
    assert "resume with: townlet train --resume" in result.output
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--steps", "1500", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_latest(run_dir / "checkpoints")[1]["trainer"]["env_steps"] == 1500
    result = runner.invoke(app, ["eval", str(run_dir), "--episodes", "20", "--agents", "10", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    for key in ("episodes", "survival_mean", "survival_median", "survival_p10", "cap_rate", "causes"):
        assert key in summary
    assert summary["episodes"] == 20 and set(summary["scripted"]) == {"random", "needs"}
    assert summary["scripted"]["needs"]["uses_per_episode"]["Job"] > 0
    result = runner.invoke(app, ["eval", str(run_dir), "--episodes", "20", "--agents", "10"])
    assert result.exit_code == 0 and "Uses per episode" in result.output and "Job" in result.output
    result = runner.invoke(app, ["train", "L0_minimal", "--set", "replay.capacty=5"])
    assert result.exit_code == 2 and "replay.capacty: unknown field" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_recurrent_agent_evaluates_with_memory_reset_per_episode(tmp_path):
    from townlet.train.evaluate import evaluate

    Trainer(small_config("L2_partial_fixed", 800, **RECURRENT), tmp_path).run()
    result = evaluate(tmp_path, episodes=8, agents=4, scripted=False)
    assert result["episodes"] == 8 and result["level"] == "L2_partial_fixed"
    assert 1 <= result["survival_mean"] <= 500 and "scripted" not in result
    # an LSTM agent is also played with its memory wiped every step, on the same episodes
    wiped = result["memory_wiped"]
    assert wiped["episodes"] == 8 and 1 <= wiped["survival_mean"] <= 500
    shown = CliRunner().invoke(app, ["eval", str(tmp_path), "--episodes", "8", "--agents", "4"])
    assert shown.exit_code == 0 and "wiped" in shown.output and "needs-memory" in shown.output


class _StateSpy(torch.nn.Module):
    """A recurrent net that records the largest |h| it is handed at each step."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def initial_state(self, n, device):
        return self.net.initial_state(n, device)

    def forward(self, obs, state):
        self.seen.append(state[0].abs().max().item())
        return self.net(obs, state)


def test_wiped_memory_hands_the_net_a_zero_state_every_step(tmp_path):
    from townlet.train import open_run
    from townlet.train.evaluate import greedy_stats

    Trainer(small_config("L2_partial_fixed", 600, **RECURRENT), tmp_path).run()
    run = open_run(tmp_path)
    policy = run.policy()
    spies = {}
    for wipe in (False, True):
        spies[wipe] = policy.network = _StateSpy(policy.network)
        greedy_stats(policy, run.level, episodes=4, agents=4, seed=3, wipe_memory=wipe)
        policy.network = spies[wipe].net
    assert spies[False].seen[0] == 0.0 and max(spies[False].seen) > 0.0  # memory carried between steps
    assert len(spies[True].seen) > 10 and max(spies[True].seen) == 0.0  # wiped before every step


def test_imitation_marks_the_guided_agents_sequences_as_demonstrations(tmp_path):
    guides = {"fraction": 0.25, "policy": "needs-memory", "imitation": 1.0, "imitate": "guided"}
    trainer = Trainer(small_config("L2_partial", 800, **RECURRENT, guides=guides), tmp_path)
    assert trainer.algorithm.learner.config.imitation_weight == 1.0 and trainer.algorithm.learner.config.margin == 0.8
    seen = []
    update = trainer.algorithm.learner.update

    def spy(batch):
        seen.append((batch.agents, batch.demo))
        return update(batch)

    trainer.algorithm.learner.update = spy
    trainer.run()
    assert seen and "imitation" in trainer.algorithm.last_stats
    agents = torch.cat([a for a, _ in seen])
    demo = torch.cat([d for _, d in seen])
    assert torch.equal(demo, agents >= 6)  # the last 2 of 8 agents are the guides
    assert demo.any() and not demo.all()


def test_imitation_needs_guides_and_a_sequence_learner():
    with pytest.raises(ConfigError, match=r"guides\.imitation: needs demonstrations .* got fraction 0\.0"):
        load_run_config("L2_partial", {"guides": {"imitation": 1.0, "imitate": "guided"}})
    with pytest.raises(ConfigError, match=r"guides\.imitation: only algorithm 'r2d2' reads it.* 'dqn'"):
        load_run_config("L1_full", {"guides": {"fraction": 0.1, "imitation": 1.0}})


def test_imitating_every_agent_stores_the_guides_advice_for_every_step(tmp_path):
    """imitate: all labels every agent's steps with what the guide policy would have done there (DAgger): the
    replay holds that advice, every sampled sequence is a demonstration, and where the agent was a guide the
    advice is the action it took."""
    guides = {"fraction": 0.25, "policy": "needs-memory", "imitation": 1.0, "imitate": "all"}
    trainer = Trainer(small_config("L2_partial", 800, **RECURRENT, guides=guides), tmp_path)
    assert trainer.algorithm.replay.advice
    seen = []
    update = trainer.algorithm.learner.update

    def spy(batch):
        seen.append(batch)
        return update(batch)

    trainer.algorithm.learner.update = spy
    trainer.run()
    assert seen and "imitation" in trainer.algorithm.last_stats
    for batch in seen:
        assert batch.demo.all() and batch.advice.shape == batch.actions.shape
        guided = (batch.agents >= 6).view(-1, 1) & batch.valid
        assert torch.equal(batch.advice[guided], batch.actions[guided])
    differs = [bool((b.advice != b.actions)[(b.agents < 6).view(-1, 1) & b.valid].any()) for b in seen]
    assert any(differs)  # the network's own agents do not always do what the guide advises
    # advice alone: nobody is guided (so no episode is left out of the metrics), yet every step is advised
    alone = Trainer(small_config("L2_partial", 800, **RECURRENT, guides={**guides, "fraction": 0.0}), tmp_path / "a")
    assert alone.algorithm.guides.count == 0 and not alone.algorithm.guides.guided.any() and alone.algorithm.replay.advice


def test_purposeful_imitation_labels_only_the_guides_purposeful_steps(tmp_path):
    """imitate: purposeful stores the no-label advice NUM_ACTIONS where the guide policy would only wander; the
    guided agents' purposeful steps are still labelled with the action they took, and imitation still trains."""
    guides = {"fraction": 0.25, "policy": "needs-memory", "imitation": 1.0, "imitate": "purposeful"}
    trainer = Trainer(small_config("L2_partial", 800, **RECURRENT, guides=guides), tmp_path)
    assert trainer.algorithm.replay.advice and trainer.algorithm.guides.purposeful_only
    seen = []
    update = trainer.algorithm.learner.update

    def spy(batch):
        seen.append(batch)
        return update(batch)

    trainer.algorithm.learner.update = spy
    trainer.run()
    assert seen and "imitation" in trainer.algorithm.last_stats and float(trainer.algorithm.last_stats["imitation"]) > 0
    advice = torch.cat([b.advice[b.valid] for b in seen])
    unlabelled = float((advice == NUM_ACTIONS).float().mean())
    assert 0.2 < unlabelled < 0.95  # the random moves (about half the steps on L2_partial) carry no label
    for batch in seen:
        guided = (batch.agents >= 6).view(-1, 1) & batch.valid & (batch.advice < NUM_ACTIONS)
        assert torch.equal(batch.advice[guided], batch.actions[guided])


def test_shaping_reaches_replay_but_not_the_episode_returns(tmp_path):
    """shaping.weight > 0: each stored reward is the world's plus γ Φ(s') − Φ(s) on that very transition
    (Φ of the final obs where an episode ended, 0 after a death), while the metrics keep the level's returns."""
    shaped = Trainer(small_config("L2_partial", 800, **RECURRENT, shaping={"weight": 2.0}), tmp_path)
    gamma = shaped.config.learner.gamma
    meters = shaped.world.obs_layout["meters"].slice
    seen: list[tuple] = []
    add, step = shaped.algorithm.replay.add, shaped.world.step

    def spy_step(actions):
        out = step(actions)
        seen.append((out[1].clone(), out[4]["final_obs"].clone(), out[0].clone()))
        return out

    def spy_add(obs, mask, actions, rewards, terminated, *rest, **kw):
        world_reward, final_obs, next_obs = seen[-1]
        after = torch.where((terminated | rest[0]).view(-1, 1), final_obs, next_obs)
        phi = lambda o: 2.0 * o[:, meters].sqrt().sum(-1)  # noqa: E731
        expected = world_reward + gamma * torch.where(terminated, 0.0, phi(after)) - phi(obs)
        assert torch.allclose(rewards, expected, atol=1e-5)
        seen.append(bool((rewards != world_reward).all()))
        return add(obs, mask, actions, rewards, terminated, *rest, **kw)

    shaped.world.step, shaped.algorithm.replay.add = spy_step, spy_add
    shaped.run()
    assert any(s is True for s in seen)
    plain = Trainer(small_config("L2_partial", 800, **RECURRENT), tmp_path / "plain")
    plain.run()
    assert plain.algorithm.shaping is None
    # both runs play the same episodes until the first update (step 400) changes the network
    early = [[r["return"] for r in read_metrics(d)[0] if r["step"] <= 400] for d in (tmp_path, tmp_path / "plain")]
    assert early[0] and early[0] == early[1]


def test_exploration_aids_reach_what_replay_stores(tmp_path):
    """εz-greedy makes exploring agents repeat their action; episodic counts pay 1 on an episode's first step and
    1 / sqrt(n) for the n-th visit after, restarting for each agent whose episode ended."""
    config = small_config("L2_partial", 1600, **{**FROM_REWARD, "exploration": {
        "start": 1.0, "end": 1.0, "decay_steps": 10, "repeat_mu": 1.0, "repeat_max": 8}})
    trainer = Trainer(config, tmp_path)
    algo = trainer.algorithm
    assert algo.repeats is not None and algo.episodic is not None and algo.learner.config.value_rescale
    actions, intrinsic, firsts = [], [], []
    for _ in range(150):
        firsts.append(trainer.first.clone())
        trainer.collect()
        row = (algo.replay._total - 1) % algo.replay.rows
        actions.append(algo.replay._actions[row].long().clone())
        intrinsic.append(algo.replay._intrinsic[row].clone())
    a, r, first = torch.stack(actions), torch.stack(intrinsic), torch.stack(firsts)
    same = (a[1:] == a[:-1]) & ~first[1:]
    assert same.float().mean() > 0.5  # uniform random valid actions would repeat about a third of the time
    assert torch.all(r[first] == 1.0)  # an episode's first situation is new to it
    counts = (1.0 / r**2).round()
    assert torch.allclose(r, counts.rsqrt()) and counts.max() > 1


def test_overrides_refuse_a_key_that_is_both_a_value_and_a_section_and_keep_the_last_value():
    for pairs in (["agents=1", "agents.x=2"], ["agents.x=2", "agents=1"], ["learner.lr=1", "learner.lr.x=2"]):
        with pytest.raises(ConfigError, match="is set both as a value and as a section"):
            parse_overrides(pairs)
    for bad in ("=1", "learner..lr=1", "learner.lr", " =2", "a b=1"):
        with pytest.raises(ConfigError, match="expected key=value with a dotted field name"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match=r"--set agents: cannot read the value '\[1' as YAML"):
        parse_overrides(["agents=[1"])
    assert parse_overrides(["seed=1", "seed=2", "learner.lr=1e-3", "learner.gamma=0.9"]) == {
        "seed": 2, "learner": {"lr": 1e-3, "gamma": 0.9}}
    assert parse_overrides(["device=nan", "guides.policy=inf"]) == {"device": "nan", "guides": {"policy": "inf"}}


def test_a_level_file_trains_with_the_default_run_config_of_the_packaged_level_it_extends(tmp_path):
    from townlet.train.config import level_file_defaults

    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: L2_partial\nname: mine\nobservation: {vision_range: 3}\n")
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text("extends: mine.yaml\nname: deeper\n")
    alone = tmp_path / "alone.yaml"
    alone.write_text((Path(__file__).parents[2] / "src/townlet/world/levels/L1_full.yaml").read_text()
                     .replace("view: full", "view: partial"))
    run = tmp_path / "run.yaml"
    run.write_text("extends: L2_partial\nagents: 3\n")
    only_extends = tmp_path / "only.yaml"
    only_extends.write_text("extends: L2_partial\n")
    assert [level_file_defaults(p) for p in (mine, deeper, alone, run, only_extends)] == [
        "L2_partial", "L2_partial", "L2_partial", None, None]
    config, default = load_run_config(deeper, {"agents": 4}), load_run_config("L2_partial")
    assert config.level == str(deeper) and config.agents == 4
    assert config.model_dump(exclude={"level", "agents"}) == default.model_dump(exclude={"level", "agents"})
    assert load_run_config(run).agents == 3 and load_run_config(run).level == "L2_partial"
