"""Where our PPO step's time goes: `python benchmarks/bench_ppo_speed.py --profile [--steps 3]`.

Runs in bench_ppo_speed's child process: timers around the step's phases (rollout, score,
make_experience, update, and inside them each model's forward, backward, clipping, optimizer
steps; core/ is only wrapped from outside, never edited) and torch.profiler's top operators over
one more step. Kept apart from the race so each file stays readable. With `overlap_models` (on by
default on a CPU) the policy's and the critic's parts of score (where the policy's first-epoch
forward runs too) and of the update run on two threads at once, so their nested rows' wall times
overlap and add up to more than the phase.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time

from bench_ppo_speed import common_setup, ours_config, peak_rss_mb
def child_profile(args) -> dict:
    """Phase timers around one of our steps (by wrapping what ppo_step calls; core is untouched),
    then torch.profiler's top operators over one more step."""
    common_setup(args)
    import torch
    import core.backends.gpt2 as vl
    import core.models.generation as gen
    import core.ppo.loop as pr
    import core.ppo.step as ppo
    from core.backends.threads import one_after_other
    from core.runtime.runs import Run
    out_dir = tempfile.mkdtemp(prefix="bench-ppo-prof-")
    cfg = ours_config(args, out_dir)
    run = Run(out_dir, "ppo")
    rss = {"after imports": peak_rss_mb()}
    tr, _ = pr.setup(cfg, run, None)
    rss["after setup"] = peak_rss_mb()
    m = tr.models
    acc: dict[str, float] = {}   # wall seconds per phase
    acc_cpu: dict[str, float] = {}  # process CPU seconds per phase (all threads)
    phase = ["-"]

    def now():
        return time.perf_counter(), time.process_time()

    def add(key, t0):
        acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0[0]
        acc_cpu[key] = acc_cpu.get(key, 0.0) + time.process_time() - t0[1]

    def timed(name, fn, set_phase=True):
        def wrapper(*a, **kw):
            prev = phase[0]
            if set_phase:
                phase[0] = name
            t = now()
            try:
                return fn(*a, **kw)
            finally:
                add(name if set_phase else f"{phase[0]}/{name}", t)
                phase[0] = prev
        return wrapper

    for name in ("rollout", "decode_responses", "score", "make_experience", "update",
                 "experience_metrics", "token_records"):
        setattr(pr, name, timed(name, getattr(pr, name)))
    # Inside the phases: forwards per model, backward, clipping, optimizer steps, decode steps.
    starts = {}

    def hook_pair(label):
        def pre(mod, inp, *rest):
            starts[label] = now()

        def post(mod, inp, out, *rest):
            add(f"{phase[0]}/{label} forward", starts.pop(label))
        return pre, post

    from core.models.heads import backbone
    # backbones: the packed forwards (core.backends.seq_packing) call them directly, the padded ones through the model
    for label, mod in (("policy", backbone(m.policy)), ("reference", backbone(m.reference)),
                       ("critic", backbone(m.critic)), ("reward", backbone(m.reward))):
        pre, post = hook_pair(label)
        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    # the padding-free GPT-2 forwards (core.backends.gpt2) call no backbone module: time them by hand
    names = {id(m.policy): "policy", id(m.reference): "reference", id(m.critic): "critic", id(m.reward): "reward"}
    read_hidden = vl.read_hidden

    def timed_read_hidden(model, *a, **kw):
        t = now()
        try:
            return read_hidden(model, *a, **kw)
        finally:
            add(f"{phase[0]}/{names.get(id(model), 'model')} forward", t)
    vl.read_hidden = timed_read_hidden
    torch.Tensor.backward = timed("backward", torch.Tensor.backward, set_phase=False)
    torch.nn.utils.clip_grad_norm_ = timed("clip_grad_norm", torch.nn.utils.clip_grad_norm_, set_phase=False)
    for i, opt in enumerate(tr.optimizers):
        opt.step = timed(f"adamw step ({'policy' if i == 0 else 'critic'})", opt.step, set_phase=False)
        opt.zero_grad = timed("zero_grad", opt.zero_grad, set_phase=False)
    for cls in (vl.Decoder, gen.GenericDecoder):
        cls.start = timed("prefill", cls.start, set_phase=False)
        cls.step = timed("decode steps", cls.step, set_phase=False)
    ppo.rl.entropy_from_logits = timed("entropy (for the record)", ppo.rl.entropy_from_logits, set_phase=False)
    ppo.rl.logprobs_from_logits = timed("logprobs_from_logits", ppo.rl.logprobs_from_logits, set_phase=False)

    def one_step(step):
        t, c = now()
        metrics, records = pr.ppo_step(tr, step, run.check_stop)
        tr.kl_ctl.update(metrics["objective/kl"], cfg.batch_size)
        run.log_metrics(step, metrics)
        run.log_tokens(records)
        run.set_status(step=step)
        return time.perf_counter() - t, time.process_time() - c, metrics

    warm = max(1, args.warmup)
    for s in range(1, warm + 1):
        one_step(s)
    rss["after warm-up"] = peak_rss_mb()
    acc.clear()
    acc_cpu.clear()
    n = max(1, args.steps)
    total = total_cpu = 0.0
    lens = []
    for s in range(warm + 1, warm + n + 1):
        dt, dc, metrics = one_step(s)
        total += dt
        total_cpu += dc
        lens.append(metrics["tokens/response_len"])
    phases = {k: v / n for k, v in acc.items()}
    phases_cpu = {k: v / n for k, v in acc_cpu.items()}
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(warm + n + 1)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=48)
    shutil.rmtree(out_dir, ignore_errors=True)
    rss["after the profiled step"] = peak_rss_mb()
    return {"step_s": total / n, "step_cpu_s": total_cpu / n, "phases": phases, "phases_cpu": phases_cpu,
            "profiler_table": table, "resp_len": lens, "rss_mb": rss,
            "threads": torch.get_num_threads(), "steps": n, "overlap": m.run_both is not one_after_other}


def print_profile(res: dict) -> None:
    step, step_cpu = res["step_s"], res["step_cpu_s"]
    ph, pc = res["phases"], res["phases_cpu"]
    print(f"our PPO step, mean of {res['steps']} steps after warm-up: {step:.3f} s/step wall, "
          f"{step_cpu:.3f} CPU s/step ({res['threads']} threads, "
          f"mean response length {statistics.mean(res['resp_len']):.1f})")
    if res.get("overlap"):
        print("policy | critic side by side (overlap_models): nested rows of score and update overlap")
    print(f"{'phase (nested: phase/part)':<50} {'wall s':>8} {'share':>7} {'CPU s':>8} {'share':>7}")

    def row(name, w, c):
        print(f"{name:<50} {w:>8.4f} {w / step:>6.1%} {c:>8.4f} {c / step_cpu:>6.1%}")
    top = ["rollout", "decode_responses", "score", "make_experience", "update",
           "experience_metrics", "token_records"]
    for name in top:
        if name not in ph:
            continue
        row(name, ph[name], pc[name])
        for k in sorted((k for k in ph if k.startswith(name + "/")), key=lambda k: -pc[k]):
            row("  " + k, ph[k], pc[k])
    row("rest of the step (prompts, checks, records, gold)", step - sum(ph[n] for n in top if n in ph),
        step_cpu - sum(pc[n] for n in top if n in pc))
    print("peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in res["rss_mb"].items()))
    print("\ntorch.profiler, one more step (profiler overhead inflates small ops):")
    print(res["profiler_table"])
