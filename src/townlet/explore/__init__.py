"""Exploration: the ε schedule."""

from townlet.explore.schedule import EpsilonSchedule

__all__ = ["EpsilonSchedule"]
