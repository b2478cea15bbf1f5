"""The seeds' formulas as pure tensor functions (torch only). A public API: keep the names."""
from .advantages import gae
from .kl_control import AdaptiveKLController, FixedKLController
from .logprobs import logprobs_from_logits
from .losses import entropy_from_logits, pairwise_loss, policy_loss, value_loss
from .masked import masked_mean, masked_var, whiten
from .rewards import kl_estimate, last_token_index, token_rewards

__all__ = [
    "gae", "logprobs_from_logits", "token_rewards", "kl_estimate", "last_token_index", "masked_mean", "masked_var", "whiten",
    "policy_loss", "value_loss", "entropy_from_logits", "pairwise_loss",
    "FixedKLController", "AdaptiveKLController",
]
