"""townlet: a fast, batched survival world for deep reinforcement learning, and agents that learn in it."""

__version__ = "0.1.0"

from townlet.world import gym_env as _gym_env  # noqa: F401 - registers townlet/<level>-v0 with gymnasium
