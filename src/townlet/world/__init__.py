"""The batched survival world: config models, engine, observations, scripted policies, packaged levels."""

from townlet.world.config import LEVEL_NAMES, METER_NAMES, REWARD_MODES, ConfigError, LevelConfig, load_level
from townlet.world.engine import ACTION_NAMES, NUM_ACTIONS, StepInfo, World
from townlet.world.evaluate import EpisodeStats, mean_ci95, run_episodes, scripted_stats, survival_summary
from townlet.world.observation import ObsField, ObsLayout
from townlet.world.policies import SCRIPTED_POLICIES, NeedsPolicy, RandomPolicy, make_policy, scripted_policies

__all__ = [
    "ACTION_NAMES",
    "LEVEL_NAMES",
    "METER_NAMES",
    "NUM_ACTIONS",
    "REWARD_MODES",
    "SCRIPTED_POLICIES",
    "ConfigError",
    "EpisodeStats",
    "LevelConfig",
    "NeedsPolicy",
    "ObsField",
    "ObsLayout",
    "RandomPolicy",
    "StepInfo",
    "World",
    "load_level",
    "make_policy",
    "mean_ci95",
    "run_episodes",
    "scripted_policies",
    "scripted_stats",
    "survival_summary",
]
