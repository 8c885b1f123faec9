"""Learners (DQN, R2D2, recurrent PPO), their target and advantage math, and acting (masked ε-greedy, masked
sampling, recurrent rollout memory)."""

from townlet.learn.acting import (
    RecurrentActor,
    RecurrentStep,
    masked_epsilon_greedy,
    masked_greedy,
    masked_random,
)
from townlet.learn.batches import SequenceBatchLike, TransitionBatchLike
from townlet.learn.common import OnlineTargetLearner, OptimConfig
from townlet.learn.dqn import DQNConfig, DQNLearner, compute_targets
from townlet.learn.ppo import (
    PPOLearner,
    PPOLearnerConfig,
    ReturnNormalizer,
    gae,
    masked_entropy,
    masked_log_probs,
    masked_logits,
    ppo_loss,
    sample_masked,
)
from townlet.learn.r2d2 import (
    R2D2Config,
    RecurrentLearner,
    SequenceTD,
    compute_sequence_targets,
    join_continuation,
    large_margin_loss,
    sequence_loss,
    sequence_td,
)
from townlet.learn.target_sync import TargetSync, hard_update, polyak_update
from townlet.learn.targets import double_q_targets, huber, masked_argmax

__all__ = [
    "DQNConfig",
    "DQNLearner",
    "OnlineTargetLearner",
    "OptimConfig",
    "PPOLearner",
    "PPOLearnerConfig",
    "R2D2Config",
    "RecurrentActor",
    "RecurrentLearner",
    "RecurrentStep",
    "ReturnNormalizer",
    "SequenceBatchLike",
    "SequenceTD",
    "TargetSync",
    "TransitionBatchLike",
    "compute_sequence_targets",
    "compute_targets",
    "double_q_targets",
    "gae",
    "hard_update",
    "huber",
    "join_continuation",
    "large_margin_loss",
    "masked_argmax",
    "masked_entropy",
    "masked_epsilon_greedy",
    "masked_greedy",
    "masked_log_probs",
    "masked_logits",
    "masked_random",
    "polyak_update",
    "ppo_loss",
    "sample_masked",
    "sequence_loss",
    "sequence_td",
]
