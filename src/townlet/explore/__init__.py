"""Exploration: the ε schedule, curiosity (Random Network Distillation or visit counts) and its annealed weight,
and guided agents that act by a scripted policy."""

from townlet.explore.annealing import IntrinsicAnnealing
from townlet.explore.counts import VisitCounts
from townlet.explore.guides import Guides
from townlet.explore.rnd import RND, RunningMeanStd
from townlet.explore.schedule import EpsilonSchedule, agent_epsilons

__all__ = ["RND", "EpsilonSchedule", "Guides", "IntrinsicAnnealing", "RunningMeanStd", "VisitCounts", "agent_epsilons"]
