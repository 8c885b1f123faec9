"""Exploration: the ε schedule, Random Network Distillation curiosity and its annealed weight."""

from townlet.explore.annealing import IntrinsicAnnealing
from townlet.explore.rnd import RND, RunningMeanStd
from townlet.explore.schedule import EpsilonSchedule, agent_epsilons

__all__ = ["RND", "EpsilonSchedule", "IntrinsicAnnealing", "RunningMeanStd", "agent_epsilons"]
