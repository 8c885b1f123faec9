"""What a live view shows: K agents of one level, driven by a trained network or a scripted policy, and the
JSON-ready frames that describe the level once (`hello`) and every tick (`frame`).

A `Simulation` is plain and synchronous (the server runs it in its own thread). Each frame is complete in
itself, so a client that missed frames (a slow tab whose queue dropped some) draws the next one correctly.
"""

from __future__ import annotations

import base64
import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import torch

from townlet.train.algos import Decision, GreedyPolicy
from townlet.train.watch import abbreviations
from townlet.world import ACTION_NAMES, METER_NAMES, LevelConfig, World, make_policy, scripted_policies
from townlet.world.config import hour_is_open

NETWORK = "network"  # the policy name of the trained network, beside the scripted policies' names
RECENT_EPISODES = 40  # finished episodes a frame lists for the survival chart


class SimulationError(ValueError):
    """A policy or setting the simulation cannot take; the message names the allowed values."""


@dataclass(frozen=True)
class FinishedEpisode:
    agent: int
    length: int
    cause: str  # a meter that emptied, or "truncated" (survived to the level's cap)
    policy: str  # the policy that played it (at its last tick)


@dataclass(frozen=True)
class _Acted:
    """What led to the state on show: every agent's action, whether it was a no-op, the actions allowed then,
    and the network's decision on that observation (None without a network)."""

    actions: list[int]
    invalid: list[bool]
    mask: list[list[bool]]
    decision: Decision | None
    outputs: str | None  # the network's kind of output ("q" or "logits"), None without a network


def main_meter(effects: dict[str, float]) -> str | None:
    """The meter an affordance is for: its largest effect that raises a meter (money in meter units)."""
    gains = {meter: value for meter, value in effects.items() if value > 0}
    return max(gains, key=gains.__getitem__) if gains else None


class Simulation:
    """`agents` agents of `level` in one batched world, each in its own episode, driven by one policy.

    `policy` is the driver's name: `NETWORK` (the trained network, when `wants_network`) or a scripted
    policy. Without a network yet (a run that has written no checkpoint) the network's place is taken by
    random play until `set_network` gives one. The network, when there is one, also reads every observation
    while a scripted policy drives, so its values and memory stay on show for comparison.
    """

    def __init__(
        self,
        level: LevelConfig,
        agents: int = 4,
        seed: int = 0,
        device: str | torch.device = "cpu",
        policy: str | None = None,
        network: GreedyPolicy | None = None,
        network_label: str = "",
        wants_network: bool = False,
    ) -> None:
        if agents < 1:
            raise SimulationError(f"agents: {agents}; at least 1")
        self.level = level
        self.world = World(level, agents, device=device, seed=seed)
        self.num_agents = agents
        wants_network = wants_network or network is not None
        self.policies: tuple[str, ...] = ((NETWORK,) if wants_network else ()) + scripted_policies(level)
        self._scripted = {name: make_policy(name, self.world, seed) for name in scripted_policies(level)}
        self.policy = ""
        self.set_policy(policy or (NETWORK if wants_network else "needs"))
        self.network: GreedyPolicy | None = None
        self.network_label = ""
        if network is not None:
            self.set_network(network, network_label)
        self.tick = 0
        self.history: deque[FinishedEpisode] = deque(maxlen=RECENT_EPISODES)
        self.causes: Counter[str] = Counter()
        self.finished = 0
        self._restart()

    # ------------------------------------------------------------------ controls
    @property
    def driver(self) -> str:
        """The policy acting now: the chosen one, or random where the network was chosen but none is loaded."""
        return "random" if self.policy == NETWORK and self.network is None else self.policy

    def set_policy(self, name: str) -> None:
        if name not in self.policies:
            raise SimulationError(f"policy {name!r} is not available here; allowed: {', '.join(self.policies)}")
        self.policy = name

    def set_network(self, network: GreedyPolicy, label: str) -> None:
        """Play a (newer) network from now on; its memory starts empty at the next tick."""
        self.network, self.network_label = network, label
        self._first = torch.ones(self.num_agents, dtype=torch.bool, device=self.world.device)

    def next_episode(self) -> None:
        """Abandon every agent's episode and start new ones (new layouts on random-layout levels)."""
        self.world.reset()
        self._restart()

    def _restart(self) -> None:
        world = self.world
        self._obs, self._mask = world.observe(), world.action_mask()
        self._first = torch.ones(self.num_agents, dtype=torch.bool, device=world.device)
        self._acted: _Acted | None = None  # None at an episode start the view began with
        self._shown = self._state_rows(torch.zeros(self.num_agents, dtype=torch.bool, device=world.device))

    # ------------------------------------------------------------------ one tick
    def step(self) -> None:
        """Advance every agent one tick."""
        world = self.world
        decision: Decision | None = None
        if self.network is not None:
            decision = self.network.decide(self._obs, self._mask, self._first)
        driver = self.driver
        actions = decision.actions if driver == NETWORK and decision is not None else self._scripted[driver].act(world)
        layout_before = world.affordance_positions
        acted_mask = self._mask
        obs, _, _, _, info = world.step(actions)
        done = info["done"]
        self._obs, self._mask, self._first = obs, world.action_mask(), done
        self.tick += 1
        self._acted = _Acted(actions.tolist(), info["invalid"].tolist(), acted_mask.tolist(), decision,
                             self.network.outputs if self.network is not None else None)
        self._shown = self._state_rows(done, info, layout_before)
        for agent in (i for i, d in enumerate(done.tolist()) if d):
            cause = world.CAUSES[self._shown[agent]["cause_index"]]
            episode = FinishedEpisode(agent, self._shown[agent]["steps"], cause, driver)
            self.history.append(episode)
            self.causes[cause] += 1
            self.finished += 1

    def _state_rows(
        self, done: torch.Tensor, info: dict | None = None, layout_before: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        """Per agent, the state on show: the world's, or for an episode that just ended its final state (the
        world has already started the next one)."""
        world = self.world
        rows = [
            {"x": x, "y": y, "meters": meters, "hour": hour, "here": here, "steps": steps, "return": ret,
             "episode": episode, "layout": layout, "done": False, "cause_index": 0}
            for (x, y), meters, hour, here, steps, ret, episode, layout in zip(
                world.positions.tolist(), world.meters.tolist(), world.hour.tolist(),
                world.affordance_here().tolist(), world.steps.tolist(), world.episode_return.tolist(),
                world.episode.tolist(), world.affordance_positions.tolist(), strict=True)
        ]
        progress = world.progress.tolist()
        ticks = [a.ticks for a in self.level.affordances]
        for row, used in zip(rows, progress, strict=True):
            row["progress"] = used / ticks[row["here"]] if row["here"] >= 0 and self.level.temporal else 0.0
        if info is not None and bool(done.any()):
            ended = done.nonzero().view(-1).tolist()
            final_obs = info["final_obs"][ended]
            lengths, returns = info["episode_length"].tolist(), info["episode_return"].tolist()
            causes = info["cause"].tolist()
            layouts = layout_before.tolist() if layout_before is not None else None
            for agent, obs in zip(ended, final_obs, strict=True):
                state = world.obs_layout.decode(obs)
                rows[agent].update(
                    x=state["x"], y=state["y"], meters=list(state["meters"]), here=state["here"],
                    hour=state["hour"], progress=state["progress"], steps=lengths[agent], done=True,
                    cause_index=causes[agent], episode=rows[agent]["episode"] - 1,
                    layout=layouts[agent] if layouts is not None else rows[agent]["layout"],
                    **{"return": returns[agent]},
                )
        if not self.level.temporal:
            for row in rows:
                row["hour"] = None
        return rows

    # ------------------------------------------------------------------ frames
    def hello(self, source: str = "") -> dict[str, Any]:
        """What stays fixed: the level, its meters and affordances, the agents and the policies on offer."""
        level = self.level
        thresholds: dict[str, list[dict[str, Any]]] = {m: [] for m in METER_NAMES}
        for cascade in level.cascades:
            thresholds[cascade.source].append({"value": cascade.threshold, "target": cascade.target})
        obs = level.observation
        return {
            "type": "hello",
            "level": level.name,
            "description": level.description,
            "source": source,
            "grid_size": level.grid_size,
            "max_steps": level.max_steps,
            "view": obs.view,
            "vision_range": obs.vision_range if obs.view == "partial" else None,
            "layout": level.layout,
            "day_length": level.temporal.day_length if level.temporal else None,
            "money_scale": level.money_scale,
            "meters": [
                {"name": m, "terminal": level.meters[m].terminal, "thresholds": thresholds[m]} for m in METER_NAMES
            ],
            "affordances": [
                {"name": a.name, "abbrev": abbrev, "cost": a.cost, "effects": dict(a.effects),
                 "hours": list(a.hours) if a.hours and level.temporal else None, "ticks": a.ticks,
                 "meter": main_meter({m: v / level.money_scale if m == "money" else v for m, v in a.effects.items()})}
                for a, abbrev in zip(level.affordances, abbreviations(level.affordance_names), strict=True)
            ],
            "actions": list(ACTION_NAMES),
            "agents": self.num_agents,
            "policies": list(self.policies),
        }

    def frame(self) -> dict[str, Any]:
        """The state on show after `tick` ticks, every agent's, with what led to it."""
        acted = self._acted
        decision = acted.decision if acted is not None else None
        values = memory = net_actions = None
        if acted is not None and decision is not None:
            net_actions = decision.actions.tolist()
            values = decision.values
            if acted.outputs == "logits":  # an actor-critic: its policy's probabilities over the allowed actions
                allowed = torch.as_tensor(acted.mask, device=values.device)
                values = torch.softmax(torch.where(allowed, values, -torch.inf), dim=-1)
            values = values.tolist()
            if decision.memory is not None:
                memory = _memory_rows(decision.memory)
        temporal = self.level.temporal is not None
        agents = []
        for i, row in enumerate(self._shown):
            agent = {
                "x": row["x"], "y": row["y"], "here": row["here"], "hour": row["hour"],
                "progress": round(row["progress"], 3), "meters": [round(v, 4) for v in row["meters"]],
                "steps": row["steps"], "return": round(row["return"], 3), "episode": row["episode"],
                "layout": row["layout"], "done": row["done"],
                "cause": self.world.CAUSES[row["cause_index"]] if row["done"] else None,
                "open": [hour_is_open(a.hours, row["hour"]) for a in self.level.affordances] if temporal else None,
                "action": None, "invalid": False, "mask": None, "values": None, "net_action": None, "memory": None,
            }
            if acted is not None:
                agent.update(action=ACTION_NAMES[acted.actions[i]], invalid=acted.invalid[i], mask=acted.mask[i])
            if values is not None and net_actions is not None:
                agent["values"] = [round(v, 4) if math.isfinite(v) else None for v in values[i]]  # JSON has no NaN
                agent["net_action"] = ACTION_NAMES[net_actions[i]]
            if memory is not None:
                agent["memory"] = memory[i]
            agents.append(agent)
        return {
            "type": "frame",
            "tick": self.tick,
            "policy": self.policy,
            "driver": self.driver,
            "network": self.network_label or None,
            "values_kind": None if values is None else "probability" if acted.outputs == "logits" else "q",  # type: ignore[union-attr]
            "agents": agents,
            "episodes": {
                "finished": self.finished,
                "causes": dict(self.causes),
                "recent": [[e.agent, e.length, e.cause, e.policy] for e in self.history],
            },
        }


def _memory_rows(hidden: torch.Tensor) -> list[dict[str, Any]]:
    """Per agent: the hidden state's norm and its values (each in (-1, 1)) as int8 steps of 1/127, base64."""
    norms = hidden.norm(dim=-1).tolist()
    cells = (hidden.clamp(-1.0, 1.0) * 127).round().to(torch.int8).cpu().numpy()
    return [{"norm": round(n, 4), "h": base64.b64encode(row.tobytes()).decode("ascii")}
            for n, row in zip(norms, cells, strict=True)]
