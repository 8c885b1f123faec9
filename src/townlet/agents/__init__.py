"""Q-networks: an MLP for full-view levels and the R2D2 recurrent network for partial-view levels."""

from townlet.agents.networks import (
    LSTMState,
    QHead,
    QNetwork,
    RecurrentQNetwork,
    mlp,
    obs_dim_of,
)

__all__ = ["LSTMState", "QHead", "QNetwork", "RecurrentQNetwork", "mlp", "obs_dim_of"]
