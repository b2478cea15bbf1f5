"""`rlhf-workbench`: the GUI (no subcommand) and the engine's commands.

    rlhf-workbench [--host H --port P --workspace DIR --auth USER:PASS]    the GUI
    rlhf-workbench train-rm --config reward.yaml [key=value ...]           train a reward model
    rlhf-workbench ppo --config ppo.yaml [key=value ...]                   run PPO
    rlhf-workbench export --db PATH --out FILE.jsonl|.parquet [--include-ties]

The training commands work under `accelerate launch` as well. Configs are the dataclasses of
core.config: YAML keys and key=value overrides are field names.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = ("train-rm", "ppo", "export")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        from workbench.app import main as gui  # imported here: core itself never imports gradio
        return gui(argv)
    ap = argparse.ArgumentParser(prog="rlhf-workbench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("train-rm", "ppo"):
        p = sub.add_parser(name)
        p.add_argument("--config", help="YAML file of config fields")
        p.add_argument("overrides", nargs="*", help="key=value field overrides")
        if name == "ppo":
            p.add_argument("--resume", help="run directory (or checkpoint directory) to resume from; without "
                           "--config it keeps the run's own config.yaml (e.g. `--resume runs/x steps=400` extends it)")
    p = sub.add_parser("export", help="write labelled pairs in TRL's preference format")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True, help="FILE.jsonl or FILE.parquet")
    p.add_argument("--include-ties", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "export":
            from pathlib import Path

            from .preferences import PreferenceStore, export
            if not Path(args.db).is_file():  # opening a store creates it: a typo must not export an empty one
                raise FileNotFoundError(f"no preference database at {args.db}")
            n = export(PreferenceStore(args.db), args.out, include_ties=args.include_ties)
            print(f"wrote {n} pairs to {args.out}")
        elif args.cmd == "train-rm":
            from .config import RewardConfig, load_config
            from .reward.training import train_reward_model
            train_reward_model(load_config(RewardConfig, args.config, args.overrides))
        elif args.cmd == "ppo":
            from .runtime.checkpoint import run_dir_of
            from .config import PPOConfig, load_config
            from .ppo.loop import run_ppo
            config = args.config
            if args.resume and not config:  # continue with the run's own settings (overrides still apply)
                config = run_dir_of(args.resume) / "config.yaml"
                if not config.is_file():
                    raise FileNotFoundError(f"{config} not found: pass --config for this run")
            if run_ppo(load_config(PPOConfig, config, args.overrides), resume=args.resume) == "failed":
                sys.exit(1)  # the reason is printed above and kept in the run's status.json / error.log
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
