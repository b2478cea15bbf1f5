"""The progress bar both training tabs show: pure, from a run's status to escaped-safe HTML."""
from __future__ import annotations

COLORS = {"running": "#2c7be5", "finished": "#2ca02c", "failed": "#d62728"}


def progress_bar(step: int, total: int, state: str | None, elem_id: str, data_step: int | None = None) -> str:
    """A thin bar, filled step/total, coloured by state. Only numbers go into the markup.
    data-step (default: step) lets tests and benchmarks read what the view last drew."""
    step, total = int(step or 0), int(total or 0)
    pct = min(100.0, 100.0 * step / total) if total > 0 else 0.0
    color = COLORS.get(state or "", "#999")
    shown = step if data_step is None else int(data_step)
    return (f'<div id="{elem_id}" data-step="{shown}" data-total="{total}" title="step {step} of {total}" '
            f'style="height:10px;background:#eee;border-radius:5px;overflow:hidden">'
            f'<div style="height:100%;width:{pct:.1f}%;background:{color}"></div></div>')
