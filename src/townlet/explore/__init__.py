"""Exploration: the ε schedule and εz-greedy repeats, curiosity (Random Network Distillation, lifetime or
per-episode visit counts) and its annealed weight, and guided agents that act by a scripted policy."""

from townlet.explore.annealing import IntrinsicAnnealing
from townlet.explore.counts import VisitCounts
from townlet.explore.episodic import EpisodicCounts
from townlet.explore.ez_greedy import EzGreedy
from townlet.explore.guides import Guides
from townlet.explore.rnd import RND, RunningMeanStd
from townlet.explore.schedule import EpsilonSchedule, agent_epsilons

__all__ = [
    "RND",
    "EpisodicCounts",
    "EpsilonSchedule",
    "EzGreedy",
    "Guides",
    "IntrinsicAnnealing",
    "RunningMeanStd",
    "VisitCounts",
    "agent_epsilons",
]
