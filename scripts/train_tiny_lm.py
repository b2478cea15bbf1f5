"""Train the embedded default model, assets/tiny-reviews, on the rt-polarity corpus.

A byte-level BPE tokenizer (the `tokenizers` library) and a small GPT-2 are trained from
scratch on real movie-review sentences read from ../shared/data/rt-polarity (never copied
into the repo). The last 500 lines of each file are held out; held-out bits per byte is the
tokenizer-independent quality figure reported in the model card.

    python scripts/train_tiny_lm.py --minutes 60 --out assets/tiny-reviews

Training is time-boxed: the cosine learning-rate schedule is laid over the wall-clock budget,
so a longer budget means more epochs over the same small corpus (dropout keeps it honest).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"  # also BOS: every text starts after it and ends with it
PAD = "<pad>"
HELD_OUT = 500


def read_corpus(data_dir: Path) -> tuple[list[str], list[str]]:
    train, held = [], []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        raw = (data_dir / name).read_bytes().decode("utf-8", errors="replace")
        lines = [ln.strip() for ln in raw.splitlines() if ln.strip()]
        train += lines[:-HELD_OUT]
        held += lines[-HELD_OUT:]
    return train, held


def train_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
    )
    tok.train_from_iterator(lines, trainer)
    eos_id = tok.token_to_id(EOS)
    # Prepend BOS (= EOS) so a prompt of two words still has a start-of-text context.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A $B", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        model_max_length=128, padding_side="left",
    )


def encode_lines(tok, lines: list[str]) -> list[list[int]]:
    # Each line becomes BOS + tokens + EOS (the tokenizer adds BOS).
    return [ids + [tok.eos_token_id] for ids in tok(lines)["input_ids"]]


def batches(seqs: list[list[int]], block: int, batch: int, rng: random.Random):
    """Endless stream of (batch, block) windows over a shuffled, packed corpus."""
    while True:
        order = seqs[:]
        rng.shuffle(order)
        stream = [t for s in order for t in s[1:]]  # drop per-line BOS: the EOS before it plays that role
        stream = torch.tensor(stream)
        n = len(stream) // block
        starts = torch.randperm(n, generator=torch.Generator().manual_seed(rng.randrange(2**31))) * block
        for i in range(0, n - batch + 1, batch):
            yield stream[starts[i:i + batch, None] + torch.arange(block)]


@torch.no_grad()
def bits_per_byte(model, tok, lines: list[str], batch: int = 64) -> float:
    """Held-out bits per byte: total NLL of each line's tokens and its EOS, over UTF-8 bytes
    of the line plus one (the newline the EOS stands for)."""
    model.eval()
    nll, nbytes = 0.0, 0
    for i in range(0, len(lines), batch):
        chunk = lines[i:i + batch]
        seqs = encode_lines(tok, chunk)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        nll -= (logp * mask[:, 1:]).sum().item()
        nbytes += sum(len(ln.encode("utf-8")) + 1 for ln in chunk)
    model.train()
    return nll / math.log(2) / nbytes


def save(model, tok, out: Path) -> None:
    """A plain Hugging Face directory, dropout off (it is a training-time setting only)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    drop = (cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    model.generation_config.update(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=24,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop = drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/rt-polarity")
    ap.add_argument("--out", default="assets/tiny-reviews")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 is robust on a busy machine")
    ap.add_argument("--init", default=None, help="continue training this model directory (keeps its tokenizer)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train_lines, held_lines = read_corpus(Path(args.data))
    if args.init:
        tok = PreTrainedTokenizerFast.from_pretrained(args.init)
        tok.padding_side = "left"
    else:
        tok = train_tokenizer(train_lines, args.vocab)
    seqs = encode_lines(tok, train_lines)
    n_tok = sum(len(s) for s in seqs)
    print(f"train lines {len(train_lines)}  held-out {len(held_lines)}  train tokens {n_tok}", flush=True)

    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=args.block, n_embd=args.dim, n_layer=args.layers,
        n_head=args.heads, resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(cfg)
    if args.init:  # same architecture, trained weights; dropout as asked for now
        model.load_state_dict(GPT2LMHeadModel.from_pretrained(args.init).state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters {n_params / 1e6:.2f}M", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    budget = args.minutes * 60
    t0 = time.time()
    step, last_log, seen = 0, t0, 0
    best_bpb, best_state = float("inf"), None  # many epochs over a small corpus: keep the best held-out
    stream = batches(seqs, args.block, args.batch, rng)
    while (elapsed := time.time() - t0) < budget:
        frac = elapsed / budget
        warm = min(1.0, step / 200) if not args.init else 1.0
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = next(stream)
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels inside
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += x.numel()
        if time.time() - last_log > 300:
            last_log = time.time()
            bpb = bits_per_byte(model, tok, held_lines)
            print(f"{elapsed / 60:6.1f} min  step {step}  epochs {seen / n_tok:5.1f}  loss {loss.item():.3f}  "
                  f"lr {lr:.2e}  held-out bpb {bpb:.3f}", flush=True)
            if bpb < best_bpb:
                best_bpb, best_state = bpb, {k: v.clone() for k, v in model.state_dict().items()}
                save(model, tok, Path(args.out + ".partial"))  # progress survives a killed run

    minutes = (time.time() - t0) / 60
    bpb = bits_per_byte(model, tok, held_lines)
    if best_state is not None and best_bpb < bpb:  # the last stretch overfitted: ship the best
        print(f"final held-out {bpb:.3f} is worse than the best {best_bpb:.3f}: keeping the best", flush=True)
        model.load_state_dict(best_state)
        bpb = best_bpb
    print(f"final: {step} steps, {minutes:.1f} min, held-out bits/byte {bpb:.3f}", flush=True)

    out = Path(args.out)
    save(model, tok, out)
    (out / "training_stats.json").write_text(json.dumps({
        "held_out_bits_per_byte": round(bpb, 4), "minutes": round(minutes, 1), "steps": step,
        "parameters": n_params, "train_tokens": n_tok, "epochs": round(seen / n_tok, 1),
        "args": vars(args)}, indent=2) + "\n")
    model.eval()
    prompts = ["this movie is", "the acting", "a charming", "i hated"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(1)
    gen = model.generate(**enc, max_new_tokens=24, do_sample=True, top_k=0, top_p=1.0)
    for text in tok.batch_decode(gen, skip_special_tokens=True):
        print("sample:", text, flush=True)


if __name__ == "__main__":
    main()
