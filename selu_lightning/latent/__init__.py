"""The latent action space (Li et al., ACL 2026; CoLA): K learned codes, an inverse dynamics model that
labels each token step with one, a world model that turns (context, code) into the next token, a policy over
codes, and a cross-modal projector that lets text-only data into the image-text space. Small modules, one job
each; the maths (shift, straight-through sampling, NLLs) in pure functions.

``modules/latent_pretrain.py`` trains it in stages; ``action_spaces/latent.py`` acts with it in RL.
"""

from selu_lightning.latent.codebook import Codebook
from selu_lightning.latent.idm import (
    InverseDynamics,
    code_usage,
    negative_entropy,
    shift_to_next,
    straight_through_gumbel,
)
from selu_lightning.latent.layers import CausalBlock, CodeStack
from selu_lightning.latent.model import (
    STAGE_COMPONENTS,
    LatentActionModel,
    LatentConfig,
    vlm_lm_head,
    vlm_norm,
)
from selu_lightning.latent.policy import code_logprobs, sample_codes
from selu_lightning.latent.projector import (
    CrossModalProjector,
    GaussianHead,
    cycle_nll,
    gaussian_nll,
)
from selu_lightning.latent.views import SequenceView, next_token_targets, sequence_view
from selu_lightning.latent.world import GatedMerge, WorldModel, world_logits

__all__ = [
    "STAGE_COMPONENTS",
    "CausalBlock",
    "CodeStack",
    "Codebook",
    "CrossModalProjector",
    "GatedMerge",
    "GaussianHead",
    "InverseDynamics",
    "LatentActionModel",
    "LatentConfig",
    "SequenceView",
    "WorldModel",
    "code_logprobs",
    "code_usage",
    "cycle_nll",
    "gaussian_nll",
    "negative_entropy",
    "next_token_targets",
    "sample_codes",
    "sequence_view",
    "shift_to_next",
    "straight_through_gumbel",
    "vlm_lm_head",
    "vlm_norm",
    "world_logits",
]  # fmt: skip
