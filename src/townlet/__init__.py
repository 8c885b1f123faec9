"""townlet: a fast, batched survival world for deep reinforcement learning, and agents that learn in it."""

__version__ = "0.1.0"
