"""gradtx: composable gradient transformations for JAX.

Every idea about turning a gradient into an update is one pure
`(init, update)` pair, and optimizers are chains of them.
"""

import importlib
import importlib.util
from typing import Any

from gradtx import masks as masks
from gradtx.adam_variants import ScaleByAdamaxState as ScaleByAdamaxState
from gradtx.adam_variants import ScaleByAmsgradState as ScaleByAmsgradState
from gradtx.adam_variants import ScaleByNadamState as ScaleByNadamState
from gradtx.adam_variants import ScaleByRadamState as ScaleByRadamState
from gradtx.adam_variants import scale_by_adamax as scale_by_adamax
from gradtx.adam_variants import scale_by_amsgrad as scale_by_amsgrad
from gradtx.adam_variants import scale_by_nadam as scale_by_nadam
from gradtx.adam_variants import scale_by_radam as scale_by_radam
from gradtx.aliases import adabelief as adabelief
from gradtx.aliases import adadelta as adadelta
from gradtx.aliases import adafactor as adafactor
from gradtx.aliases import adagrad as adagrad
from gradtx.aliases import adam as adam
from gradtx.aliases import adam_l2 as adam_l2
from gradtx.aliases import adamax as adamax
from gradtx.aliases import adamaxw as adamaxw
from gradtx.aliases import adamw as adamw
from gradtx.aliases import adamw_independent as adamw_independent
from gradtx.aliases import adamw_multiplier as adamw_multiplier
from gradtx.aliases import ademamix as ademamix
from gradtx.aliases import adopt as adopt
from gradtx.aliases import amsgrad as amsgrad
from gradtx.aliases import lamb as lamb
from gradtx.aliases import lars as lars
from gradtx.aliases import lbfgs as lbfgs
from gradtx.aliases import lion as lion
from gradtx.aliases import muon as muon
from gradtx.aliases import nadam as nadam
from gradtx.aliases import nadamw as nadamw
from gradtx.aliases import novograd as novograd
from gradtx.aliases import prodigy as prodigy
from gradtx.aliases import radam as radam
from gradtx.aliases import rmsprop as rmsprop
from gradtx.aliases import rprop as rprop
from gradtx.aliases import schedule_free_adamw as schedule_free_adamw
from gradtx.aliases import schedule_free_sgd as schedule_free_sgd
from gradtx.aliases import sgd as sgd
from gradtx.aliases import sgd_l2 as sgd_l2
from gradtx.aliases import sgdw as sgdw
from gradtx.aliases import sign_sgd as sign_sgd
from gradtx.aliases import signum as signum
from gradtx.aliases import yogi as yogi
from gradtx.averaging import EmaParamsState as EmaParamsState
from gradtx.averaging import LookaheadState as LookaheadState
from gradtx.averaging import ScheduleFreeState as ScheduleFreeState
from gradtx.averaging import SwaParamsState as SwaParamsState
from gradtx.averaging import averaged_params as averaged_params
from gradtx.averaging import ema_params as ema_params
from gradtx.averaging import lookahead as lookahead
from gradtx.averaging import lookahead_slow_params as lookahead_slow_params
from gradtx.averaging import schedule_free as schedule_free
from gradtx.averaging import schedule_free_eval_params as schedule_free_eval_params
from gradtx.averaging import swa_params as swa_params
from gradtx.base import EmptyState as EmptyState
from gradtx.base import GradientTransformation as GradientTransformation
from gradtx.base import apply_updates as apply_updates
from gradtx.base import chain as chain
from gradtx.base import describe as describe
from gradtx.base import identity as identity
from gradtx.base import set_to_zero as set_to_zero
from gradtx.checkpoint import check_state as check_state
from gradtx.checkpoint import restore_state as restore_state
from gradtx.checkpoint import save_state as save_state
from gradtx.clipping import adaptive_grad_clip as adaptive_grad_clip
from gradtx.clipping import clip as clip
from gradtx.clipping import clip_by_global_norm as clip_by_global_norm
from gradtx.clipping import global_norm as global_norm
from gradtx.decay import AddDecayedWeightsState as AddDecayedWeightsState
from gradtx.decay import AddL1PenaltyState as AddL1PenaltyState
from gradtx.decay import ProximalL1State as ProximalL1State
from gradtx.decay import add_decayed_weights as add_decayed_weights
from gradtx.decay import add_l1_penalty as add_l1_penalty
from gradtx.decay import proximal_l1 as proximal_l1
from gradtx.factored import ScaleByFactoredRmsState as ScaleByFactoredRmsState
from gradtx.factored import ScaleByParamBlockRmsState as ScaleByParamBlockRmsState
from gradtx.factored import clip_by_block_rms as clip_by_block_rms
from gradtx.factored import scale_by_factored_rms as scale_by_factored_rms
from gradtx.factored import scale_by_param_block_rms as scale_by_param_block_rms
from gradtx.injection import InjectHyperparamsState as InjectHyperparamsState
from gradtx.injection import ReduceOnPlateauState as ReduceOnPlateauState
from gradtx.injection import inject_hyperparams as inject_hyperparams
from gradtx.injection import latest_learning_rate as latest_learning_rate
from gradtx.injection import reduce_on_plateau as reduce_on_plateau
from gradtx.injection import set_hyperparams as set_hyperparams
from gradtx.layerwise import ScaleByNovogradState as ScaleByNovogradState
from gradtx.layerwise import scale_by_novograd as scale_by_novograd
from gradtx.layerwise import scale_by_trust_ratio as scale_by_trust_ratio
from gradtx.moments import ScaleByAdemamixState as ScaleByAdemamixState
from gradtx.moments import ScaleByAdoptState as ScaleByAdoptState
from gradtx.moments import ScaleByBeliefState as ScaleByBeliefState
from gradtx.moments import ScaleByYogiState as ScaleByYogiState
from gradtx.moments import scale_by_ademamix as scale_by_ademamix
from gradtx.moments import scale_by_adopt as scale_by_adopt
from gradtx.moments import scale_by_belief as scale_by_belief
from gradtx.moments import scale_by_yogi as scale_by_yogi
from gradtx.orthogonal import MuonDimensionNumbers as MuonDimensionNumbers
from gradtx.orthogonal import ScaleByMuonMomentumState as ScaleByMuonMomentumState
from gradtx.orthogonal import muon_dimension_numbers as muon_dimension_numbers
from gradtx.orthogonal import muon_mask as muon_mask
from gradtx.orthogonal import orthogonalize as orthogonalize
from gradtx.orthogonal import scale_by_muon_momentum as scale_by_muon_momentum
from gradtx.orthogonal import scale_by_shape as scale_by_shape
from gradtx.quasi_newton import ScaleByLbfgsState as ScaleByLbfgsState
from gradtx.quasi_newton import ScaleByZoomLinesearchState as ScaleByZoomLinesearchState
from gradtx.quasi_newton import scale_by_lbfgs as scale_by_lbfgs
from gradtx.quasi_newton import scale_by_zoom_linesearch as scale_by_zoom_linesearch
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
from gradtx.schedules import constant_schedule as constant_schedule
from gradtx.schedules import cosine_decay_schedule as cosine_decay_schedule
from gradtx.schedules import cyclic_schedule as cyclic_schedule
from gradtx.schedules import exponential_decay as exponential_decay
from gradtx.schedules import inverse_sqrt_schedule as inverse_sqrt_schedule
from gradtx.schedules import join_schedules as join_schedules
from gradtx.schedules import linear_schedule as linear_schedule
from gradtx.schedules import one_cycle_schedule as one_cycle_schedule
from gradtx.schedules import piecewise_constant_schedule as piecewise_constant_schedule
from gradtx.schedules import polynomial_schedule as polynomial_schedule
from gradtx.schedules import sgdr_schedule as sgdr_schedule
from gradtx.schedules import (
    warmup_cosine_decay_schedule as warmup_cosine_decay_schedule,
)
from gradtx.self_tuning import ProdigyState as ProdigyState
from gradtx.self_tuning import scale_by_prodigy as scale_by_prodigy
from gradtx.sharding import abstract_state as abstract_state
from gradtx.sharding import state_shardings as state_shardings
from gradtx.sharpness import SamState as SamState
from gradtx.sharpness import sam as sam
from gradtx.sign import ScaleByLionState as ScaleByLionState
from gradtx.sign import ScaleByRpropState as ScaleByRpropState
from gradtx.sign import scale_by_lion as scale_by_lion
from gradtx.sign import scale_by_rprop as scale_by_rprop
from gradtx.sign import scale_by_sign as scale_by_sign
from gradtx.wrappers import AccumulateGradientsState as AccumulateGradientsState
from gradtx.wrappers import ApplyIfFiniteState as ApplyIfFiniteState
from gradtx.wrappers import MaskedState as MaskedState
from gradtx.wrappers import MultiTransformState as MultiTransformState
from gradtx.wrappers import accumulate_gradients as accumulate_gradients
from gradtx.wrappers import apply_if_finite as apply_if_finite
from gradtx.wrappers import freeze as freeze
from gradtx.wrappers import masked as masked
from gradtx.wrappers import multi_transform as multi_transform

__version__ = "0.1.0"

# The fused CPU step is an annex (the subpackage `gradtx.fused`): the core
# never imports it, and without it the library is complete. Its names are
# offered here when it is installed, and imported on first use.
_ANNEX = ("FusedStep", "fused", "fused_step")
_HAS_ANNEX = importlib.util.find_spec("gradtx.fused") is not None


def __getattr__(name: str) -> Any:
    if name in _ANNEX and _HAS_ANNEX:
        module = importlib.import_module("gradtx.fused")
        return module if name == "fused" else getattr(module, name)
    raise AttributeError(f"module 'gradtx' has no attribute {name!r}")


__all__ = [
    "AccumulateGradientsState",
    "AddDecayedWeightsState",
    "AddL1PenaltyState",
    "ApplyIfFiniteState",
    "EmaParamsState",
    "EmptyState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "LookaheadState",
    "MaskedState",
    "MultiTransformState",
    "MuonDimensionNumbers",
    "ProdigyState",
    "ProximalL1State",
    "ReduceOnPlateauState",
    "SamState",
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByFactoredRmsState",
    "ScaleByLbfgsState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByMomentumState",
    "ScaleByMuonMomentumState",
    "ScaleByNadamState",
    "ScaleByNovogradState",
    "ScaleByParamBlockRmsState",
    "ScaleByRadamState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByScheduleState",
    "ScaleByYogiState",
    "ScaleByZoomLinesearchState",
    "ScheduleFreeState",
    "SwaParamsState",
    "abstract_state",
    "accumulate_gradients",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adam_l2",
    "adamax",
    "adamaxw",
    "adamw",
    "adamw_independent",
    "adamw_multiplier",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_l1_penalty",
    "ademamix",
    "adopt",
    "amsgrad",
    "apply_if_finite",
    "apply_updates",
    "averaged_params",
    "chain",
    "check_state",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "cyclic_schedule",
    "describe",
    "ema_params",
    "exponential_decay",
    "freeze",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "inverse_sqrt_schedule",
    "join_schedules",
    "lamb",
    "lars",
    "latest_learning_rate",
    "lbfgs",
    "linear_schedule",
    "lion",
    "lookahead",
    "lookahead_slow_params",
    "masked",
    "masks",
    "multi_transform",
    "muon",
    "muon_dimension_numbers",
    "muon_mask",
    "nadam",
    "nadamw",
    "novograd",
    "one_cycle_schedule",
    "orthogonalize",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "prodigy",
    "proximal_l1",
    "radam",
    "reduce_on_plateau",
    "restore_state",
    "rmsprop",
    "rprop",
    "sam",
    "save_state",
    "scale",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_lbfgs",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_momentum",
    "scale_by_muon_momentum",
    "scale_by_nadam",
    "scale_by_novograd",
    "scale_by_param_block_rms",
    "scale_by_prodigy",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_schedule",
    "scale_by_shape",
    "scale_by_sign",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_by_zoom_linesearch",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "set_hyperparams",
    "set_to_zero",
    "sgd",
    "sgd_l2",
    "sgdr_schedule",
    "sgdw",
    "sign_sgd",
    "signum",
    "state_shardings",
    "swa_params",
    "warmup_cosine_decay_schedule",
    "yogi",
]
if _HAS_ANNEX:
    __all__ += ["FusedStep", "fused", "fused_step"]
