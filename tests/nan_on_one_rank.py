"""`accelerate launch tests/nan_on_one_rank.py ppo --config ...`: the CLI with process 1's reward
scores turned to NaN at step 2 (test_ppo_distributed: every process must fail there, named)."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import core.ppo.step as ppo  # noqa: E402
from core.cli import main  # noqa: E402

real, calls = ppo.score_texts, {"n": 0}


def poisoned(*a, **k):
    s = real(*a, **k)
    calls["n"] += 1
    return s * float("nan") if os.environ.get("RANK") == "1" and calls["n"] == 2 else s


ppo.score_texts = poisoned
main()
