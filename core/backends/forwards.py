"""One forward interface for the algorithms, chosen once per model at setup.

    fwd = select(model, probe)          # PaddedForward, PackedForward or GPT2Forward
    fwd.logprobs(ids, mask, P, temperature, with_entropy)   # policy, reference
    fwd.values(ids, mask, P)                                # critic
    fwd.scores(ids, mask)                                   # reward model
    fwd.hidden_at(ids, mask4d, position_ids, at)            # reward training's packed pairs
    fwd.decoder(prompt_ids, prompt_mask, max_new_tokens)    # sampling

The algorithm sees (B, P + T) rows in and (B, T) or (B,) tensors out, never a batch layout.

- `PaddedForward` is the reference: the model's own Hugging Face forward on the padded batch.
- `PackedForward` lays a batch's sequences end to end in shared rows with a block-diagonal mask
  (core.backends.seq_packing), where that leaves under PACK_IF_BELOW of the padded slots.
- `GPT2Forward` runs GPT-2 padding-free, with its last-block shortcut and KV-cache decoder
  (core.backends.gpt2).

`select` takes the fastest candidate the model allows and, given a probe batch of the run's own
data, checks it against the padded forward there, once; on disagreement it falls back to padding
and says why (`fwd.reason`). docs/architecture.md tells how to add a model family's forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import rl
from ..models.generation import GenericDecoder, response_logits, scaled
from ..models.heads import at_least_fp32, backbone, has_lm_head, packing_refusal, score_head, sequence_scores, token_scores
from . import gpt2
from .seq_packing import PackedBatch, pack_batch, packed_hidden, unpack

PACK_IF_BELOW = 0.9  # pack a batch when that leaves under 90% of its padded slots (else the gathers cost more)
AGREE_ATOL = 1e-3    # the probe check looks for a wrong forward (errors of order 1), not for rounding


@dataclass
class Probe:
    """A batch of the run's own data to check a forward on: (B, P + T) rows, P prompt columns."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropies of their distributions (in the graph when grad is on)."""
    return rl.entropy_from_logits(logits, torch.ones(logits.shape[:-1], device=logits.device))


class PaddedForward:
    """The model's own forward on the padded batch: the reference every other forward matches."""
    name = "padded"

    def __init__(self, model, reason: str = ""):
        self.model, self.reason = model, reason

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, P: int, temperature: float) -> torch.Tensor:
        """(B, P + T) -> (B, T, V): the logits that predicted each response token."""
        return response_logits(self.model, ids, mask, P, temperature)

    def logprobs(self, ids: torch.Tensor, mask: torch.Tensor, P: int, temperature: float,
                 with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, P + T) -> (B, T) logprobs of the response tokens, and their distributions' (B, T)
        entropies when asked (else None). Positions after a row's end hold arbitrary finite values."""
        logits = self.logits(ids, mask, P, temperature)  # (B, T, V)
        return rl.logprobs_from_logits(logits, ids[:, P:]), _entropy(logits) if with_entropy else None

    def values(self, ids: torch.Tensor, mask: torch.Tensor, P: int) -> torch.Tensor:
        """(B, P + T) -> (B, T): V of the state each response token was sampled from."""
        return token_scores(self.model, ids, mask)[:, P - 1:-1]

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B,): the score head at each row's last attended token."""
        return sequence_scores(self.model, ids, mask)

    def hidden_at(self, ids, mask4d, position_ids, at) -> torch.Tensor:
        """(B, L) rows with their own 4D mask -> final hidden states at positions `at` (B, k): (B, k, H)."""
        hidden = backbone(self.model)(input_ids=ids, attention_mask=mask4d, position_ids=position_ids,
                                      use_cache=False).last_hidden_state  # (B, L, H)
        return hidden[torch.arange(len(hidden), device=hidden.device)[:, None], at]

    def decoder(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
        return GenericDecoder(self.model, prompt_ids, prompt_mask, max_new_tokens)


class PackedForward(PaddedForward):
    """Sequences end to end in shared rows (core.backends.seq_packing); the padded batch when
    packing would not save enough slots. `always` packs every batch, at rows of up to
    `capacity` tokens (the probe check uses it so that sequences really share rows)."""
    name = "packed"

    def __init__(self, model, reason: str = "", always: bool = False, capacity: int | None = None):
        super().__init__(model, reason)
        self.always, self.capacity = always, capacity

    def _pack(self, ids: torch.Tensor, mask: torch.Tensor) -> PackedBatch | None:
        if self.capacity:
            return pack_batch(ids, mask, capacity=self.capacity, fewest_slots=False)
        pb = pack_batch(ids, mask)
        return pb if self.always or pb.input_ids.numel() < PACK_IF_BELOW * ids.numel() else None

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, P: int) -> torch.Tensor | None:
        pb = self._pack(ids, mask)
        return None if pb is None else unpack(packed_hidden(self.model, pb), pb, slice(P - 1, ids.shape[1] - 1))

    def logits(self, ids, mask, P, temperature):
        hidden = self._hidden(ids, mask, P)  # (B, T, H)
        if hidden is None:
            return super().logits(ids, mask, P, temperature)
        return scaled(self.model.get_output_embeddings()(hidden), temperature)

    def values(self, ids, mask, P):
        hidden = self._hidden(ids, mask, P)
        if hidden is None:
            return super().values(ids, mask, P)
        return at_least_fp32(score_head(self.model)(hidden).squeeze(-1))


class GPT2Forward(PaddedForward):
    """GPT-2 padding-free (core.backends.gpt2). The (M, V) logits of the real positions never
    become a (B, T, V) grid: no padded rows in the softmaxes, no grid to fill and scatter."""
    name = "gpt2"

    @staticmethod
    def _grid(x: torch.Tensor, lay: gpt2.Layout, ids: torch.Tensor, P: int) -> torch.Tensor:
        """(M, ...) values at the read positions -> (B, T, ...)."""
        return gpt2.to_grid(x, lay, ids.shape[1], slice(P - 1, ids.shape[1] - 1))

    def _read_logits(self, ids, mask, P, temperature) -> tuple[torch.Tensor, gpt2.Layout]:
        """(M, V) logits at the M positions that predict response tokens, and their layout."""
        lay = gpt2.response_layout(mask, P)
        return scaled(self.model.get_output_embeddings()(gpt2.read_hidden(self.model, ids, lay)), temperature), lay

    def logits(self, ids, mask, P, temperature):
        logits, lay = self._read_logits(ids, mask, P, temperature)
        return self._grid(logits, lay, ids, P)

    def logprobs(self, ids, mask, P, temperature, with_entropy=False):
        logits, lay = self._read_logits(ids, mask, P, temperature)  # (M, V)
        lp = rl.logprobs_from_logits(logits, ids.flatten()[lay.read_flat + 1])  # (M,): the token each position predicts
        return self._grid(lp, lay, ids, P), self._grid(_entropy(logits), lay, ids, P) if with_entropy else None

    def values(self, ids, mask, P):
        lay = gpt2.response_layout(mask, P)
        values = at_least_fp32(score_head(self.model)(gpt2.read_hidden(self.model, ids, lay)).squeeze(-1))  # (M,)
        return self._grid(values, lay, ids, P)

    def scores(self, ids, mask):
        lay = gpt2.last_token_layout(mask)  # one read per row, in row order
        return score_head(self.model)(gpt2.read_hidden(self.model, ids, lay)).squeeze(-1)

    def hidden_at(self, ids, mask4d, position_ids, at):
        return gpt2.hidden_at(self.model, ids, mask4d, position_ids, at)

    def decoder(self, prompt_ids, prompt_mask, max_new_tokens):
        if gpt2.decoder_supported(self.model):
            return gpt2.Decoder(self.model, prompt_ids, prompt_mask, max_new_tokens)
        return super().decoder(prompt_ids, prompt_mask, max_new_tokens)


def candidate(model, prefer: str = "auto") -> PaddedForward:
    """The fastest forward this model's architecture allows, unchecked. prefer: auto | padded."""
    if prefer == "padded":
        return PaddedForward(model, "asked for")
    if gpt2.supported(model):
        return GPT2Forward(model)
    refusal = packing_refusal(model)
    if refusal:
        return PaddedForward(model, f"no packing: {refusal}")
    return PackedForward(model)


@torch.no_grad()
def agrees(fwd: PaddedForward, probe: Probe, atol: float = AGREE_ATOL) -> bool:
    """Does `fwd` give the padded forward's numbers on the probe batch (what the model's head
    yields: response logprobs, or values and last-token scores)? Any error means no."""
    model, (ids, mask, P) = fwd.model, (probe.input_ids, probe.attention_mask, probe.prompt_len)
    ref = PaddedForward(model)
    test = PackedForward(model, always=True, capacity=2 * int(mask.sum(1).max())) if fwd.name == "packed" else fwd
    real = mask[:, P:].bool()
    was_training = model.training
    model.eval()
    try:
        if has_lm_head(model):
            pairs = [(test.logprobs(ids, mask, P, 1.0)[0][real], ref.logprobs(ids, mask, P, 1.0)[0][real])]
        else:
            pairs = [(test.values(ids, mask, P)[real], ref.values(ids, mask, P)[real]),
                     (test.scores(ids, mask), ref.scores(ids, mask))]
        return all(torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-3) for a, b in pairs)
    except Exception:  # noqa: BLE001 - a forward that fails on real data is not used
        return False
    finally:
        model.train(was_training)


def select(model, probe: Probe | None = None, prefer: str = "auto") -> PaddedForward:
    """The forward for `model`, decided once: the fastest candidate that gives the padded
    forward's numbers on `probe` (unchecked without one), else the padded forward."""
    fwd = candidate(model, prefer)
    if fwd.name != "padded" and probe is not None and not agrees(fwd, probe):
        return PaddedForward(model, f"the {fwd.name} forward disagreed with the padded one on the run's first batch")
    return fwd
