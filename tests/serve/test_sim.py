"""The simulation behind the live view: frames tell the world's state, the network's view and the episodes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from townlet.serve.sim import NETWORK, FinishedEpisode, Simulation, SimulationError, main_meter
from townlet.train import load_run_config
from townlet.train.algos import GreedyPolicy, build_network, make_greedy_policy
from townlet.world import ACTION_NAMES, METER_NAMES, ObsLayout, load_level


def network_policy(level_name: str, overrides: dict | None = None, config_name: str = "L0_minimal") -> GreedyPolicy:
    """A freshly initialised (untrained) network of a run config, as a greedy policy on `level_name`."""
    config = load_run_config(config_name, overrides or {})
    layout = ObsLayout.for_level(load_level(level_name))
    return make_greedy_policy(config, layout, build_network(config, layout).state_dict())


LSTM = {"algorithm": "r2d2", "network": {"kind": "lstm", "lstm_hidden": 16},
        "replay": {"burn_in": 2, "train_len": 4}}


def test_the_first_frame_is_every_agents_start() -> None:
    level = load_level("L0_minimal")
    sim = Simulation(level, agents=3, seed=2)
    frame = json.loads(json.dumps(sim.frame()))  # plain JSON all the way down
    assert frame["type"] == "frame" and frame["tick"] == 0 and frame["policy"] == frame["driver"] == "needs"
    positions = sim.world.positions.tolist()
    for i, agent in enumerate(frame["agents"]):
        assert [agent["x"], agent["y"]] == positions[i]
        assert agent["meters"] == [level.meters[m].start for m in METER_NAMES]
        assert agent["layout"] == [list(a.position) for a in level.affordances]
        assert agent["action"] is None and agent["values"] is None and agent["steps"] == 0 and not agent["done"]
    assert frame["values_kind"] is None and frame["episodes"] == {"finished": 0, "causes": {}, "recent": []}


def test_a_step_shows_the_worlds_new_state_and_the_action_that_led_there() -> None:
    sim = Simulation(load_level("L1_full"), agents=4, policy="random")
    for _ in range(5):
        sim.step()
    frame = sim.frame()
    world = sim.world
    assert frame["tick"] == 5 and frame["driver"] == "random"
    for i, agent in enumerate(frame["agents"]):
        assert [agent["x"], agent["y"]] == world.positions[i].tolist()
        assert agent["meters"] == pytest.approx(world.meters[i].tolist(), abs=1e-4)
        assert agent["steps"] == 5 and agent["here"] == int(world.affordance_here()[i])
        assert agent["action"] in ACTION_NAMES and len(agent["mask"]) == 5 and agent["hour"] is None
        assert agent["open"] is None  # an instant level: nothing ever closes


def test_the_networks_q_values_and_choice_are_shown_while_a_scripted_policy_drives() -> None:
    level = load_level("L0_minimal")
    policy = network_policy("L0_minimal")
    sim = Simulation(level, agents=3, network=policy, network_label="ckpt_x", policy="needs")
    obs, mask = sim.world.observe(), sim.world.action_mask()
    sim.step()
    frame = sim.frame()
    with torch.no_grad():
        q = policy.network(obs)
    assert frame["values_kind"] == "q" and frame["driver"] == "needs" and frame["network"] == "ckpt_x"
    for i, agent in enumerate(frame["agents"]):
        assert agent["values"] == pytest.approx(q[i].tolist(), abs=1e-4)
        assert agent["mask"] == mask[i].tolist()
        assert agent["net_action"] == ACTION_NAMES[int(torch.where(mask[i], q[i], -torch.inf).argmax())]


def test_values_that_are_not_numbers_are_sent_as_null() -> None:
    """JSON has no NaN: a diverged network's outputs reach the page as nulls, not as invalid JSON."""
    policy = network_policy("L0_minimal")
    with torch.no_grad():
        for parameter in policy.network.parameters():
            parameter.fill_(float("nan"))
    sim = Simulation(load_level("L0_minimal"), agents=2, network=policy, network_label="nan", policy="needs")
    sim.step()
    text = json.dumps(sim.frame(), allow_nan=False)
    assert all(v is None for a in json.loads(text)["agents"] for v in a["values"])


def test_the_network_drives_when_chosen_and_an_actor_critic_shows_probabilities() -> None:
    level = load_level("L0_minimal")
    policy = network_policy("L0_minimal", {"network": {"hidden": [16], "lstm_hidden": 8}}, "L2_partial_ppo")
    assert policy.outputs == "logits"
    sim = Simulation(level, agents=4, network=policy, network_label="ppo")
    assert sim.policy == sim.driver == NETWORK
    for _ in range(3):
        sim.step()
    frame = sim.frame()
    assert frame["values_kind"] == "probability"
    for agent in frame["agents"]:
        p = np.array(agent["values"])
        assert p.sum() == pytest.approx(1.0, abs=1e-3)
        assert all(v == 0.0 for v, allowed in zip(p, agent["mask"], strict=True) if not allowed)
        assert agent["action"] == agent["net_action"]
        assert p[ACTION_NAMES.index(agent["action"])] >= p.max() - 1e-4  # the most probable (shown to 4 places)


def test_an_lstm_agents_memory_is_its_hidden_state() -> None:
    level = load_level("L0_minimal")
    sim = Simulation(level, agents=2, network=network_policy("L0_minimal", LSTM), network_label="lstm")
    for _ in range(4):
        sim.step()
    hidden = sim.network._actor.h[-1]  # the state after the last observation
    for i, agent in enumerate(sim.frame()["agents"]):
        memory = agent["memory"]
        assert memory["norm"] == pytest.approx(float(hidden[i].norm()), abs=1e-4)
        cells = np.frombuffer(base64.b64decode(memory["h"]), dtype=np.int8) / 127
        assert cells.shape == (16,) and np.abs(cells - hidden[i].numpy()).max() <= 0.5 / 127 + 1e-6


def test_an_ended_episode_shows_its_final_state_and_joins_the_history() -> None:
    """The world restarts an agent at once; the frame of the tick it died shows how it died, in its old town."""
    sim = Simulation(load_level("L2_partial"), agents=3, seed=1, policy="needs-sweep")
    for _ in range(3):
        sim.step()
    layout_before = sim.world.affordance_positions[0].tolist()
    sim.world.meters[0, METER_NAMES.index("energy")] = 1e-4  # agent 0 runs out of energy this tick
    sim.step()
    agent = sim.frame()["agents"][0]
    assert agent["done"] and agent["cause"] == "energy" and agent["steps"] == 4
    assert agent["meters"][METER_NAMES.index("energy")] == 0.0
    assert agent["layout"] == layout_before != sim.world.affordance_positions[0].tolist()  # a new town drawn
    assert int(sim.world.steps[0]) == 0  # the world has begun the next episode
    assert list(sim.history) == [FinishedEpisode(0, 4, "energy", "needs-sweep")]
    episodes = sim.frame()["episodes"]
    assert episodes == {"finished": 1, "causes": {"energy": 1}, "recent": [[0, 4, "energy", "needs-sweep"]]}
    sim.step()
    agent = sim.frame()["agents"][0]
    assert not agent["done"] and agent["steps"] == 1 and agent["layout"] == sim.world.affordance_positions[0].tolist()


def test_temporal_levels_show_the_hour_and_which_places_are_open() -> None:
    level = load_level("L3_temporal_fixed")
    sim = Simulation(level, agents=1)
    agent = sim.frame()["agents"][0]
    start = level.temporal.start_hour
    assert agent["hour"] == start
    job = level.affordance_names.index("Job")
    assert agent["open"][job] is (8 <= start < 18)
    for _ in range(3):
        sim.step()
    assert sim.frame()["agents"][0]["hour"] == start + 3


def test_next_episode_restarts_every_agent() -> None:
    sim = Simulation(load_level("L0_minimal"), agents=2)
    for _ in range(4):
        sim.step()
    sim.next_episode()
    frame = sim.frame()
    assert frame["tick"] == 4 and all(a["steps"] == 0 and a["episode"] == 1 for a in frame["agents"])
    assert all(a["action"] is None for a in frame["agents"]) and sim.finished == 0


def test_policies_on_offer_and_random_play_until_a_network_arrives() -> None:
    level = load_level("L2_partial")
    scripted = Simulation(level, agents=1)
    assert scripted.policies == ("random", "needs", "needs-memory", "needs-view", "needs-explore", "needs-sweep",
                                 "needs-recall")
    with pytest.raises(SimulationError, match="allowed: random, needs"):
        scripted.set_policy(NETWORK)
    waiting = Simulation(load_level("L0_minimal"), agents=1, wants_network=True)
    assert waiting.policy == NETWORK and waiting.driver == "random" and waiting.policies[0] == NETWORK
    waiting.step()
    assert waiting.frame()["values_kind"] is None
    waiting.set_network(network_policy("L0_minimal"), "first")
    waiting.step()
    assert waiting.driver == NETWORK and waiting.frame()["values_kind"] == "q"
    with pytest.raises(SimulationError, match="agents"):
        Simulation(level, agents=0)


def test_hello_describes_the_level() -> None:
    level = load_level("L3_temporal")
    hello = Simulation(level, agents=2).hello("level L3_temporal")
    assert hello["type"] == "hello" and hello["grid_size"] == 8 and hello["agents"] == 2
    assert hello["view"] == "partial" and hello["vision_range"] == 2 and hello["day_length"] == 24
    assert [a["name"] for a in hello["affordances"]] == level.affordance_names
    bed = hello["affordances"][level.affordance_names.index("Bed")]
    assert bed["meter"] == "energy" and bed["hours"] is None and bed["abbrev"] == "Be"
    assert hello["affordances"][level.affordance_names.index("Job")]["meter"] == "money"
    hygiene = next(m for m in hello["meters"] if m["name"] == "hygiene")
    assert {t["target"] for t in hygiene["thresholds"]} == {"satiation", "fitness", "mood", "health", "energy"}
    assert [m["terminal"] for m in hello["meters"]] == [level.meters[m].terminal for m in METER_NAMES]
    assert hello["actions"] == list(ACTION_NAMES) and json.dumps(hello)


def test_main_meter_is_the_largest_gain() -> None:
    assert main_meter({"energy": 0.5, "health": 0.02}) == "energy"
    assert main_meter({"energy": -0.1}) is None
