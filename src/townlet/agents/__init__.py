"""Q-networks (an MLP for full-view levels, the R2D2 recurrent network for partial-view levels) and PPO's
recurrent actor-critic."""

from townlet.agents.actor_critic import ActorCritic
from townlet.agents.networks import (
    LSTMState,
    QHead,
    QNetwork,
    RecurrentQNetwork,
    mlp,
    obs_dim_of,
)

__all__ = ["ActorCritic", "LSTMState", "QHead", "QNetwork", "RecurrentQNetwork", "mlp", "obs_dim_of"]
