"""Recurrent PPO's pieces and the learner end to end: GAE at deaths, truncations and the rollout's end, the
masked policy, resets inside an unroll, and two tasks it must solve (one that needs memory)."""

from __future__ import annotations

import math

import torch

from tests.learn.synthetic_envs import ChainEnv, CueEnv
from townlet.agents import ActorCritic
from townlet.learn import (
    PPOLearner,
    PPOLearnerConfig,
    RecurrentActor,
    gae,
    masked_entropy,
    masked_log_probs,
    sample_masked,
)

GAMMA, LAM = 0.9, 0.8


def ppo_config(**changes: object) -> PPOLearnerConfig:
    """Every field, typical small-task values, with `changes` applied."""
    fields: dict = {
        "rollout_len": 16, "epochs": 4, "minibatches": 4, "gamma": 0.9, "gae_lambda": 0.95, "clip_coef": 0.2,
        "entropy_coef": 0.01, "value_coef": 0.5, "normalize_returns": True, "lr": 3e-3, "adam_eps": 1e-5,
        "grad_clip": 0.5,
    }  # fmt: skip
    return PPOLearnerConfig(**(fields | changes))


def drive(env: ChainEnv | CueEnv, learner: PPOLearner, steps: int) -> None:
    """The loop the trainer runs: act, step, observe (with the true last obs of ended episodes), update."""
    first = torch.ones(env.n, dtype=torch.bool)
    for _ in range(steps):
        actions = learner.act(env.obs(), env.mask(), first)
        out = env.step(actions)
        learner.observe(out.rewards, out.terminated, out.truncated, out.final_obs)
        learner.update()
        first = out.terminated | out.truncated


def hand_gae(terminated: list[bool], truncated: list[bool], rewards: list[float], next_values: list[float],
             values: list[float]) -> list[float]:  # fmt: skip
    """One agent's advantages, written out the textbook way."""
    out, last = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        bootstrap = 0.0 if terminated[t] else GAMMA * next_values[t]
        delta = rewards[t] + bootstrap - values[t]
        last = delta + (0.0 if terminated[t] or truncated[t] else GAMMA * LAM * last)
        out[t] = last
    return out


def test_gae_stops_at_deaths_bootstraps_truncations_and_the_rollout_end() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])  # [T, N]: agents die / truncate / run
    values = torch.tensor([[0.5] * 3, [0.6] * 3, [0.7] * 3])
    # next_values: V(obs t+1) inside episodes, V(final obs) = 5 at agent 1's truncation, V(next obs) = 0.8 at the end
    next_values = torch.tensor([[0.6] * 3, [9.0, 5.0, 0.7], [0.8] * 3])
    terminated = torch.tensor([[False] * 3, [True, False, False], [False] * 3])
    truncated = torch.tensor([[False] * 3, [False, True, False], [False] * 3])
    adv, ret = gae(rewards, values, next_values, terminated, truncated, GAMMA, LAM)
    assert torch.allclose(ret, adv + values)
    # by hand: agent 0 dies at t=1 (no bootstrap: the 9.0 is ignored), agent 1 is truncated there (bootstraps 5.0)
    assert torch.allclose(adv[:, 0], torch.tensor([1.04 + 0.72 * 1.4, 1.4, 3.02]))
    assert torch.allclose(adv[:, 1], torch.tensor([1.04 + 0.72 * 5.9, 5.9, 3.02]))
    assert torch.allclose(adv[:, 2], torch.tensor([1.04 + 0.72 * (2.03 + 0.72 * 3.02), 2.03 + 0.72 * 3.02, 3.02]))
    for n in range(3):
        expected = hand_gae(terminated[:, n].tolist(), truncated[:, n].tolist(), rewards[:, n].tolist(),
                            next_values[:, n].tolist(), values[:, n].tolist())  # fmt: skip
        assert torch.allclose(adv[:, n], torch.tensor(expected))
    # nothing of the next episode leaks back across an episode boundary; it does inside an episode
    later = rewards.clone()
    later[2] += 10.0
    adv2, _ = gae(later, values, next_values, terminated, truncated, GAMMA, LAM)
    assert torch.equal(adv2[:2, :2], adv[:2, :2]) and not torch.equal(adv2[:2, 2], adv[:2, 2])


def test_masked_sampling_never_picks_an_invalid_action_and_entropy_counts_valid_ones_only() -> None:
    n = 20_000
    logits = torch.tensor([8.0, 0.0, 1.0, 0.0, 8.0]).expand(n, 5)
    mask = torch.tensor([False, True, True, True, False]).expand(n, 5)
    actions = sample_masked(logits, mask, torch.Generator().manual_seed(0))
    assert mask[torch.arange(n), actions].all()
    freq = torch.bincount(actions, minlength=5).float() / n
    expected = torch.tensor([0.0, 1.0, math.e, 1.0, 0.0]) / (2 + math.e)
    assert torch.allclose(freq, expected, atol=0.02)
    logp = masked_log_probs(logits[:2], mask[:2])
    assert torch.allclose(logp[0, 1:4].exp().sum(), torch.tensor(1.0)) and torch.isinf(logp[0, [0, 4]]).all()
    uniform = torch.zeros(3, 5, requires_grad=True)
    masks = torch.tensor([[True] * 5, [True, True, False, False, False], [False, False, False, True, False]])
    h = masked_entropy(masked_log_probs(uniform, masks), masks)
    assert torch.allclose(h, torch.tensor([math.log(5), math.log(2), 0.0]))
    h.sum().backward()  # no NaN from the invalid actions' 0 * -inf
    assert uniform.grad is not None and torch.isfinite(uniform.grad).all()


def test_an_unroll_restarts_memory_where_first_marks_an_episode_start() -> None:
    torch.manual_seed(0)
    net = ActorCritic(3, hidden_size=8, encoder_hidden=(8,))
    obs = torch.randn(2, 5, 3)
    state = (torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    first = torch.zeros(2, 5, dtype=torch.bool)
    first[0, 3] = True
    logits, values, _ = net.evaluate(obs, state, first)
    # agent 0: steps 0-2 from the given state, steps 3-4 from zeros; agent 1 straight through
    a, va, _ = net.evaluate(obs[:1, :3], (state[0][:, :1], state[1][:, :1]))
    b, vb, _ = net.evaluate(obs[:1, 3:])
    c, vc, _ = net.evaluate(obs[1:], (state[0][:, 1:], state[1][:, 1:]))
    assert torch.allclose(logits[0], torch.cat([a, b], 1)[0], atol=1e-6)
    assert torch.allclose(values[0], torch.cat([va, vb], 1)[0], atol=1e-6)
    assert torch.allclose(logits[1], c[0], atol=1e-6) and torch.allclose(values[1], vc[0], atol=1e-6)
    assert not torch.allclose(logits[0, 3:], net.evaluate(obs[:1], (state[0][:, :1], state[1][:, :1]))[0][0, 3:])


def step_by_step(net: ActorCritic, obs: torch.Tensor, state: tuple, first: torch.Tensor) -> tuple:
    """The reference unroll: one LSTM step at a time, the memory zeroed before each step `first` marks."""
    b, t, _ = obs.shape
    x = net.encoder(obs.reshape(b * t, -1)).reshape(b, t, -1)
    (h, c), outs = state, []
    for i in range(t):
        keep = (~first[:, i]).float().view(1, b, 1)
        out, (h, c) = net.lstm(x[:, i : i + 1], (h * keep, c * keep))
        outs.append(out)
    return torch.cat([x, torch.cat(outs, dim=1)], dim=-1), (h, c)


def test_the_one_call_unroll_equals_a_step_by_step_one_in_values_state_and_gradients() -> None:
    """Resets at the first step, the last, several in one row and none: outputs, the state after the last step
    (read from a segment that starts midway) and every gradient match the step-by-step unroll."""
    torch.manual_seed(0)
    net = ActorCritic(6, hidden_size=8, encoder_hidden=(8,))
    first = torch.zeros(5, 7, dtype=torch.bool)
    first[0, 0] = first[1, 6] = first[2, 2] = first[2, 3] = first[2, 5] = first[4, 1] = True
    for pattern in (first, torch.rand(9, 11) < 0.3):
        b, t = pattern.shape
        obs = torch.randn(b, t, 6)
        state = (torch.randn(1, b, 8), torch.randn(1, b, 8))
        got, (h, c) = net.features(obs, state, pattern)
        want, (wh, wc) = step_by_step(net, obs, state, pattern)
        assert torch.allclose(got, want, atol=1e-6)
        assert torch.allclose(h, wh, atol=1e-6) and torch.allclose(c, wc, atol=1e-6)
        params = [net.encoder[0].weight, net.lstm.weight_hh_l0, net.lstm.bias_ih_l0]
        grads = torch.autograd.grad((got.square().sum() + h.sum() + c.sum()), params)
        wanted = torch.autograd.grad((want.square().sum() + wh.sum() + wc.sum()), params)
        for g, w in zip(grads, wanted, strict=True):
            assert torch.allclose(g, w, atol=1e-5)


def test_only_the_read_final_values_are_evaluated_and_the_advantages_are_unchanged() -> None:
    """Inside a rollout the learner evaluates V(final obs) only for truncated agents (and every agent at the
    rollout's last step); its advantages equal those with V(final obs) taken for every agent at every step."""
    torch.manual_seed(0)
    n, steps = 8, 12
    net = ActorCritic(3, hidden_size=8, encoder_hidden=(8,))
    learner = PPOLearner(net, ppo_config(rollout_len=steps, minibatches=1, normalize_returns=False), n, "cpu",
                         torch.Generator().manual_seed(0))  # fmt: skip
    env = ChainEnv(n, max_steps=3)
    env.t = torch.arange(n) % 3  # the agents' time limits fall on different steps
    first = torch.ones(n, dtype=torch.bool)
    h, c = net.initial_state(n)
    every = []
    for _ in range(steps):
        obs = env.obs()
        keep = (~first).float().view(1, n, 1)
        _, _, (h, c) = net.evaluate(obs.unsqueeze(1), (h * keep, c * keep))
        out = env.step(learner.act(obs, env.mask(), first))
        every.append(net.evaluate(out.final_obs.unsqueeze(1), (h, c))[1].squeeze(1))
        learner.observe(out.rewards, out.terminated, out.truncated, out.final_obs)
        first = out.terminated | out.truncated
    assert 0 < int(learner.truncated[:-1].sum()) < n * (steps - 1)  # some agents truncated midway, not all
    every_value = torch.stack(every).detach()
    read = learner.truncated.clone()
    read[-1] = True
    assert torch.allclose(learner.final_values[read], every_value[read], atol=1e-6)
    assert (learner.final_values[~read] == 0).all()  # never evaluated
    next_values = torch.where(learner.truncated, every_value, torch.cat([learner.values[1:], every_value[-1:]]))
    want = gae(learner.rewards, learner.values, next_values, learner.terminated, learner.truncated, 0.9, 0.95)
    for got, expected in zip(learner.advantages(), want, strict=True):
        assert torch.allclose(got, expected, atol=1e-6)


def test_a_truncated_step_stores_the_value_of_its_final_observation() -> None:
    """V(final obs) comes from the agent's memory after its last observation, not the next episode's start."""
    torch.manual_seed(0)
    net = ActorCritic(3, hidden_size=8, encoder_hidden=(8,))
    learner = PPOLearner(net, ppo_config(rollout_len=4, minibatches=1), 2, "cpu", torch.Generator().manual_seed(0))
    env = ChainEnv(2, max_steps=2)
    first = torch.ones(2, dtype=torch.bool)
    h, c = net.initial_state(2)
    for _ in range(2):
        obs = env.obs()
        _, _, (h, c) = net.evaluate(obs.unsqueeze(1), (h, c))
        actions = learner.act(obs, env.mask(), first)
        out = env.step(actions)
        learner.observe(out.rewards, out.terminated, out.truncated, out.final_obs)
        first = out.terminated | out.truncated
    assert out.truncated.all()
    _, expected, _ = net.evaluate(out.final_obs.unsqueeze(1), (h, c))
    assert torch.allclose(learner.final_values[1], expected.squeeze(1))
    assert not torch.allclose(expected, net.evaluate(out.final_obs.unsqueeze(1))[1])  # memory matters here


def train_chain(seed: int) -> ActorCritic:
    torch.manual_seed(seed)
    net = ActorCritic(ChainEnv.obs_dim, hidden_size=32, encoder_hidden=(32,))
    learner = PPOLearner(net, ppo_config(), 32, "cpu", torch.Generator().manual_seed(seed),
                         torch.Generator().manual_seed(seed + 1))  # fmt: skip
    drive(ChainEnv(32), learner, 200)
    assert learner.updates == 200 // 16
    return net


def test_ppo_solves_the_chain() -> None:
    net = train_chain(0)
    env, actor = ChainEnv(64), RecurrentActor(net, 64)  # greedy play, as GreedyPolicy does
    for t in range(3):
        act = actor.act(env.obs(), env.mask(), 0.0)
        assert torch.equal(act.actions, ChainEnv.optimal[env.pos]), f"step {t}"
        out = env.step(act.actions)
    assert bool(out.terminated.all()) and bool((out.rewards == 1.0).all())


def cue_accuracy(memory: bool, seed: int = 0) -> float:
    """The cue comes 20 steps before the choice; greedy play of fresh episodes after 600 steps of training."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = ActorCritic(CueEnv.obs_dim, hidden_size=32, encoder_hidden=(32,), memory=memory, forget_bias=3.0)
    config = ppo_config(rollout_len=64, minibatches=2, gamma=0.95, entropy_coef=0.03)
    learner = PPOLearner(net, config, 64, "cpu", g, torch.Generator().manual_seed(1))
    drive(CueEnv(64, g), learner, 600)
    env, actor = CueEnv(1000, g, random_phase=False), RecurrentActor(net, 1000)
    for _ in range(env.delay + 1):
        out = env.step(actor.act(env.obs(), env.mask(), 0.0).actions)
    assert bool(out.terminated.all())
    return float((out.rewards > 0).float().mean())


def test_ppo_recalls_the_cue_with_memory() -> None:
    assert cue_accuracy(memory=True) >= 0.95


def test_without_memory_the_cue_stays_at_chance() -> None:
    # Why the LSTM is there: the Linear core sees only the blank choice step.
    assert 0.35 <= cue_accuracy(memory=False) <= 0.65
