"""Loading the four models of RLHF: policy, frozen reference, critic and reward model.

Everything is a plain Hugging Face model: the policy an AutoModelForCausalLM, the reward model
and the critic an AutoModelForSequenceClassification with num_labels=1. The critic uses the same
class as the reward model (DeepSpeed-Chat initialises it from the reward model), but reads the
score head at every position instead of only the last one. So whatever we save loads with plain
transformers, and any causal LM transformers loads, we can train.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, PreTrainedModel)

from .config import DEFAULT_MODEL
from .gelu import TanhGELU
from .onednn import enabled as onednn_enabled
from .onednn import use_onednn
from .rl import last_token_index


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (unless RLHF_DEVICE/prefer says otherwise), else CPU."""
    prefer = prefer or os.environ.get("RLHF_DEVICE")
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distributed_on_cpu() -> bool:
    """Whether accelerate's processes talk over gloo on the CPU: no CUDA, `accelerate launch --cpu`, or
    RLHF_DEVICE=cpu. accelerate's PartialState() needs `cpu=True` to see a CPU process group at all;
    without it every process of `accelerate launch --multi_gpu` on a CPU machine runs alone."""
    from accelerate.utils import parse_flag_from_env
    return parse_flag_from_env("ACCELERATE_USE_CPU") or pick_device().type == "cpu"  # cpu when no CUDA


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on CPU (no bf16 units on our CPUs, and fp32 is exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)}, bf16 autocast)"
    return f"cpu ({torch.get_num_threads()} threads, fp32{', oneDNN linears' if onednn_enabled() else ''})"


def check_model_dir(path: str) -> None:
    """A clear error for a path that is neither a model directory nor plausibly a hub id."""
    p = Path(path)
    if p.exists() and not (p / "config.json").exists():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not p.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise ValueError(f"model directory {path} does not exist")


def load_tokenizer(path: str = DEFAULT_MODEL):
    """Tokenizer with a pad token and left padding (generation pads prompts on the left).

    Models without a pad token get their EOS as pad. That is safe here because nothing in the
    workbench finds positions by comparing with pad_token_id: masks carry that information.
    """
    check_model_dir(path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise ValueError(f"{path}: the tokenizer has no EOS token; set one before using it for RLHF")
    tok.padding_side = "left"
    return tok


def use_fast_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """Swap GPT-2's `gelu_new` (tanh GELU built from five elementwise ops; about 14% of a PPO
    update on CPU) for core.gelu's: torch's fused kernel on GPU and for small tensors, a sigmoid
    form that avoids the CPU's slow tanh otherwise (outputs differ by < 1e-6)."""
    from transformers.activations import NewGELUActivation
    for name, sub in list(model.named_modules()):
        for child_name, child in list(sub.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(sub, child_name, TanhGELU())
    return model


def use_fast_kernels(model: torch.nn.Module, device: torch.device | None) -> torch.nn.Module:
    """Move to the device, with core.gelu's GELU and, on the CPU, core.onednn's linear layers."""
    device = device or pick_device()
    use_fast_gelu(model).to(device)
    return use_onednn(model) if torch.device(device).type == "cpu" else model


def load_policy(path: str = DEFAULT_MODEL, device: torch.device | None = None, trainable: bool = True):
    check_model_dir(path)
    config = AutoConfig.from_pretrained(path)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{path} is an encoder-decoder model; the workbench trains causal LMs")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except ValueError as e:
        raise ValueError(f"{path} is not a causal language model: {e}") from None
    use_fast_kernels(model, device)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    model.train(trainable)
    model.requires_grad_(trainable)
    return model


def load_reference(path: str = DEFAULT_MODEL, device: torch.device | None = None):
    """A frozen copy of the initial policy."""
    return load_policy(path, device, trainable=False).eval()


def load_scalar_model(path: str, device: torch.device | None = None, trainable: bool = False,
                      pad_token_id: int | None = None):
    """A reward model or critic: AutoModelForSequenceClassification with one output.

    From a causal LM directory the score head is freshly initialised; from a reward model it is
    loaded. Positions are found from attention masks, so pad_token_id only has to exist.
    """
    check_model_dir(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id if pad_token_id is not None else model.config.eos_token_id
    use_fast_kernels(model, device)
    model.train(trainable)
    model.requires_grad_(trainable)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere: nn.Dropout modules and the float rates attention modules keep
    (Llama-style attention reads `self.attention_dropout` in training mode)."""
    for sub in model.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.p = 0.0
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            if isinstance(getattr(sub, name, None), float):
                setattr(sub, name, 0.0)


def packing_refusal(model: PreTrainedModel) -> str | None:
    """Why this model cannot run packed rows (core.seq_packing, core.pair_packing), or None.

    Packing hands the model a custom 4D mask and restarted position_ids. That is exact only for
    full attention through sdpa or eager: flash-attention reads a 4D float mask as a padding mask
    (on CUDA an out-of-range index, which kills the context), a sliding window lives in the mask
    transformers builds and would be dropped, and conv / SSM / linear-attention layers ignore
    masks and mix neighbouring sequences. A check on one batch cannot see these reliably (short
    sequences fit any window), so they are refused up front."""
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} (packing needs sdpa or eager)"
    kinds = set(getattr(cfg, "layer_types", None) or [])
    if kinds - {"full_attention"}:
        return f"layer types {sorted(kinds)} (packing needs full attention in every layer)"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        return f"sliding-window attention (window {cfg.sliding_window})"
    return None


def plain_gpt2_attention(config) -> bool:
    """A GPT-2 config whose attention is the textbook one (1/sqrt(d) scaling, no layer-index scaling,
    no fp32 upcast reordering, no cross-attention): what the GPT-2 fast paths (core.fastdecode,
    core.last_layer, core.varlen) reimplement. Any other GPT-2 takes the model's own forward."""
    return (config.model_type == "gpt2" and getattr(config, "scale_attn_weights", True)
            and not getattr(config, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(config, "reorder_and_upcast_attn", False)
            and not getattr(config, "add_cross_attention", False))


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer under a task head (GPT2's `transformer`, Llama's `model`, ...)."""
    return getattr(model, model.base_model_prefix)


def block_parts(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The direct children of each transformer block (attention, MLP, norms): modules the forward
    paths call (the padding-free GPT-2 path calls the norms and the MLP, not attention's own
    forward); core.overlap hooks them."""
    blocks = max((x for x in model.modules() if isinstance(x, torch.nn.ModuleList)), key=len, default=[])
    return [c for b in blocks for c in b.children()]


def score_head(model: PreTrainedModel) -> torch.nn.Module:
    """The linear head of a sequence-classification model (`score` for decoder-only models)."""
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no score head")


def token_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position: (B, L) -> (B, L). Critic values per token."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding safe
    hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids, use_cache=False).last_hidden_state
    return score_head(model)(hidden).squeeze(-1).float()  # (B, L)


def sequence_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward: the head at the last attended position of each row. (B, L) -> (B,).

    Found from the attention mask rather than pad_token_id, so it is right for either padding
    side and for models whose pad token equals EOS (where EOS ends every scored text).
    """
    scores = token_scores(model, input_ids, attention_mask)  # (B, L)
    return scores.gather(1, last_token_index(attention_mask).clamp(min=0)[:, None]).squeeze(1)
