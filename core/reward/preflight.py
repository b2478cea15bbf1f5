"""What can be checked of a reward-model config before any weights load: the base model, the
tokenizer's pad and EOS, and the data. The GUI calls this before starting a job, so a bad config
is an error at once, not a failed run directory."""
from __future__ import annotations

from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from ..config import RewardConfig
from ..data.reward_pairs import prepare_data
from ..models.loading import check_model_dir


def check_base_model(path: str) -> None:
    """A ValueError a user understands for a base model that is missing or is not a causal LM."""
    check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a model from {path!r}: {str(e).splitlines()[0]}") from None
    archs = config.architectures or []
    if getattr(config, "is_encoder_decoder", False) or (archs and not any(
            a.endswith(("ForCausalLM", "LMHeadModel", "ForSequenceClassification")) for a in archs)):
        raise ValueError(f"{path} is not a causal language model (architectures: {', '.join(archs) or '?'}); "
                         "the reward model starts from a causal LM such as the workbench's policy")
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ValueError(f"transformers has no sequence-classification head for model type {config.model_type!r}")


def load_reward_tokenizer(path: str):
    """The base model's tokenizer with a pad token distinct from EOS.

    Why distinct: with right padding, plain transformers finds the scored position as the last
    non-pad token. Were pad == EOS, it would skip the EOS that ends every scored text and score
    the token before it, so the saved model would score differently outside the workbench.
    """
    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token; the reward is read at the EOS after the response")
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "right"  # matches core.models.scoring; saved with the model for plain-transformers users
    return tok


def preflight(cfg: RewardConfig) -> dict:
    """Everything that can be checked without loading weights; raises ValueError. Returns the data info."""
    check_base_model(cfg.base_model)
    return prepare_data(cfg, load_reward_tokenizer(cfg.base_model))[2]
