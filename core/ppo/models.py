"""PPO's four models and how each runs, decided once at setup.

`load_models` loads the policy, the reference (or, with LoRA, the policy's adapter switched
off), the critic and the reward model; `prepare` applies the CPU kernels, selects each model's
forward on a probe batch of the run's own prompts, and picks how two independent jobs run
(core.backends). The algorithm (core/ppo/step.py) then only calls `m.policy_fwd.logprobs(...)`,
`m.critic_fwd.values(...)`, `m.reward_fwd.scores(...)` and `m.run_both(a, b)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import backends
from ..config import GenerationConfig, PPOConfig
from ..models.generation import decode_responses, generate
from ..models.loading import disable_dropout, load_policy, load_reference, load_scalar_model, load_tokenizer
from ..models.scoring import format_for_scoring, scoring_max_length

PROBE_PROMPTS = 8  # prompts sampled at setup to check the fast forwards against the padded ones


@dataclass
class Models:
    policy: torch.nn.Module
    critic: torch.nn.Module
    reward: torch.nn.Module
    tokenizer: object
    reward_tokenizer: object
    reference: torch.nn.Module | None = None  # None: LoRA policy, reference = adapter disabled
    policy_fwd: backends.PaddedForward = None  # each model's forward (core.backends.select)
    critic_fwd: backends.PaddedForward = None
    reward_fwd: backends.PaddedForward = None
    reference_fwd: backends.PaddedForward | None = None
    run_both: Callable = backends.threads.one_after_other  # how two independent jobs run
    kernels: tuple = field(default_factory=tuple)  # the CPU kernels applied

    def __post_init__(self):  # unchecked candidates until prepare() checks them on real data
        for name in ("policy", "critic", "reward", "reference"):
            if getattr(self, name) is not None and getattr(self, f"{name}_fwd") is None:
                setattr(self, f"{name}_fwd", backends.forwards.candidate(getattr(self, name)))

    def reference_logprobs(self, ids, mask, P: int, temperature: float) -> torch.Tensor:
        """(B, T) logprobs under the frozen reference (with LoRA: the policy, adapter off)."""
        if self.reference is None:
            with self.policy.disable_adapter():
                return self.policy_fwd.logprobs(ids, mask, P, temperature)[0]
        return self.reference_fwd.logprobs(ids, mask, P, temperature)[0]

    def forward_names(self) -> dict:
        """Which forward each model runs, for status.json."""
        return {name: getattr(self, f"{name}_fwd").name for name in ("policy", "reference", "critic", "reward")
                if getattr(self, f"{name}_fwd") is not None}


def load_models(cfg: PPOConfig, device, policy_from: str | None = None, critic_from: str | None = None) -> Models:
    if not cfg.reward_model:
        raise ValueError("reward_model is required: train one in the Reward model tab or with `rlhf-workbench train-rm`")
    tok = load_tokenizer(cfg.policy)
    policy = load_policy(cfg.policy, device)
    reference = None
    if cfg.lora_rank:
        from peft import LoraConfig, PeftModel, get_peft_model
        if policy_from:
            policy = PeftModel.from_pretrained(policy, policy_from, is_trainable=True)
        else:
            from transformers.pytorch_utils import Conv1D  # GPT-2-style layers store weights transposed
            transposed = any(isinstance(m, Conv1D) for m in policy.modules())
            policy = get_peft_model(policy, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                                                       target_modules="all-linear", lora_dropout=0.0,
                                                       fan_in_fan_out=transposed))
    else:
        reference = load_reference(cfg.policy, device)
        if policy_from:
            policy = load_policy(policy_from, device)
    policy.config.use_cache = False
    reward_tok = load_tokenizer(cfg.reward_model)
    reward = load_scalar_model(cfg.reward_model, device, trainable=False).eval()
    critic_src = critic_from or (cfg.reward_model if cfg.critic_init == "reward" else cfg.policy)
    critic = load_scalar_model(critic_src, device, trainable=True, pad_token_id=tok.pad_token_id)
    for mod in (policy, critic):  # dropout would make "old" logprobs disagree with the sampled ones
        disable_dropout(mod)
    return Models(policy, critic, reward, tok, reward_tok, reference)


@torch.no_grad()
def probes(m: Models, prompts: list[str], cfg: PPOConfig, seed: int) -> tuple[backends.Probe, backends.Probe]:
    """A rollout of the run's first prompts through the models' own forwards, as the policy's
    and critic's probe (prompt + response rows), and the same texts as the reward model reads
    them (its tokenizer, prompt + response + EOS)."""
    gen = GenerationConfig(max_new_tokens=cfg.response_length, temperature=cfg.temperature,
                           stop_at_eos=cfg.stop_token == "eos")
    first = prompts[:PROBE_PROMPTS]
    g = torch.Generator(device=next(m.policy.parameters()).device).manual_seed(seed)
    s = generate(m.policy, m.tokenizer, first, gen, generator=g)
    responses = decode_responses(m.tokenizer, s)
    ids, mask, _ = format_for_scoring(m.reward_tokenizer, first, responses, scoring_max_length(m.reward),
                                      device=s.input_ids.device)
    return backends.Probe(s.input_ids, s.attention_mask, s.prompt_len), backends.Probe(ids, mask, 1)


def prepare(m: Models, prompts: list[str], cfg: PPOConfig, device, processes: int) -> Models:
    """Kernels on every model, each model's forward checked on the run's own data, and how the
    policy's and critic's work runs; once, before the first step."""
    m.kernels = ()
    for model in (m.policy, m.reference, m.critic, m.reward):
        if model is not None:
            m.kernels = backends.optimize(model, device, cfg.cpu_kernels)
    rows, texts = probes(m, prompts, cfg, cfg.seed)
    m.policy_fwd = backends.select(m.policy, rows)
    m.reference_fwd = None if m.reference is None else backends.select(m.reference, rows)
    m.critic_fwd = backends.select(m.critic, rows)
    m.reward_fwd = backends.select(m.reward, texts)
    m.run_both = backends.runner(device, processes, cfg.overlap_models)
    return m


def make_optimizers(m: Models, cfg: PPOConfig) -> list:
    pol = [p for p in m.policy.parameters() if p.requires_grad]
    kw = {"fused": True} if next(m.policy.parameters()).device.type == "cpu" else {}
    return [torch.optim.AdamW(pol, lr=cfg.learning_rate, eps=1e-5, **kw),
            torch.optim.AdamW(m.critic.parameters(), lr=cfg.critic_learning_rate, eps=1e-5, **kw)]
