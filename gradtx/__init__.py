"""gradtx: composable gradient transformations for JAX.

Every idea about turning a gradient into an update is one pure
`(init, update)` pair, and optimizers are chains of them.
"""

from gradtx.aliases import adadelta as adadelta
from gradtx.aliases import adagrad as adagrad
from gradtx.aliases import adam as adam
from gradtx.aliases import adam_l2 as adam_l2
from gradtx.aliases import adamw as adamw
from gradtx.aliases import rmsprop as rmsprop
from gradtx.aliases import sgd as sgd
from gradtx.base import EmptyState as EmptyState
from gradtx.base import GradientTransformation as GradientTransformation
from gradtx.base import apply_updates as apply_updates
from gradtx.base import chain as chain
from gradtx.base import describe as describe
from gradtx.base import identity as identity
from gradtx.base import set_to_zero as set_to_zero
from gradtx.clipping import clip as clip
from gradtx.clipping import clip_by_global_norm as clip_by_global_norm
from gradtx.clipping import global_norm as global_norm
from gradtx.decay import AddDecayedWeightsState as AddDecayedWeightsState
from gradtx.decay import AddL1PenaltyState as AddL1PenaltyState
from gradtx.decay import add_decayed_weights as add_decayed_weights
from gradtx.decay import add_l1_penalty as add_l1_penalty
from gradtx.scaling import ScaleByAdadeltaState as ScaleByAdadeltaState
from gradtx.scaling import ScaleByAdagradState as ScaleByAdagradState
from gradtx.scaling import ScaleByAdamState as ScaleByAdamState
from gradtx.scaling import ScaleByLearningRateState as ScaleByLearningRateState
from gradtx.scaling import ScaleByMomentumState as ScaleByMomentumState
from gradtx.scaling import ScaleByRmsState as ScaleByRmsState
from gradtx.scaling import ScaleByScheduleState as ScaleByScheduleState
from gradtx.scaling import scale as scale
from gradtx.scaling import scale_by_adadelta as scale_by_adadelta
from gradtx.scaling import scale_by_adagrad as scale_by_adagrad
from gradtx.scaling import scale_by_adam as scale_by_adam
from gradtx.scaling import scale_by_learning_rate as scale_by_learning_rate
from gradtx.scaling import scale_by_momentum as scale_by_momentum
from gradtx.scaling import scale_by_rms as scale_by_rms
from gradtx.scaling import scale_by_schedule as scale_by_schedule

__version__ = "0.1.0"

__all__ = [
    "AddDecayedWeightsState",
    "AddL1PenaltyState",
    "EmptyState",
    "GradientTransformation",
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "ScaleByMomentumState",
    "ScaleByRmsState",
    "ScaleByScheduleState",
    "adadelta",
    "adagrad",
    "adam",
    "adam_l2",
    "adamw",
    "add_decayed_weights",
    "add_l1_penalty",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "describe",
    "global_norm",
    "identity",
    "rmsprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_momentum",
    "scale_by_rms",
    "scale_by_schedule",
    "set_to_zero",
    "sgd",
]
