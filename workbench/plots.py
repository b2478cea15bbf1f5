"""Pure plot builders: a DataFrame (or lists) in, a plotly Figure out. No gradio, no files.

Metrics frames are core.runtime.runs.read_metrics rows turned into a DataFrame: one row per step, a
column per metric, NaN where a step did not log that metric (validation runs only every N steps).
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
CHOSEN_COLOR, REJECTED_COLOR = "#2ca02c", "#d62728"


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """metrics.jsonl rows -> DataFrame indexed by nothing, sorted by step."""
    if not rows:
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


def _empty(title: str, message: str = "no data yet") -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, height=300, margin=dict(l=40, r=10, t=40, b=40),
                      xaxis=dict(visible=False), yaxis=dict(visible=False),
                      annotations=[dict(text=message, showarrow=False, font=dict(size=14, color="#888"))])
    return fig


def line_figure(df: pd.DataFrame, series: dict[str, tuple[str, str]], title: str, y_title: str,
                x: str = "step", y_range: tuple[float, float] | None = None) -> go.Figure:
    """One line per column of `series` {column: (legend name, colour)} present in df.

    Sparse columns (validation) drop their NaN rows and are drawn with markers, so a value
    logged every 20 steps still reads as a curve.
    """
    present = [c for c in series if c in df.columns and df[c].notna().any()]
    if df.empty or not present:
        return _empty(title)
    fig = go.Figure()
    for col in present:
        name, color = series[col]
        d = df[[x, col]].dropna()
        sparse = len(d) < len(df)
        fig.add_trace(go.Scatter(x=d[x], y=d[col], name=name, mode="lines+markers" if sparse else "lines",
                                 line=dict(color=color, width=2 if sparse else 1.5)))
    fig.update_layout(title=title, height=300, margin=dict(l=40, r=10, t=40, b=40), hovermode="x unified",
                      legend=dict(orientation="h", y=-0.25), xaxis_title=x, yaxis_title=y_title)
    if y_range:
        fig.update_yaxes(range=list(y_range))
    return fig


def reward_loss_figure(df: pd.DataFrame) -> go.Figure:
    return line_figure(df, {"loss/reward": ("train", TRAIN_COLOR), "val/loss": ("validation", VAL_COLOR)},
                       "Bradley-Terry loss", "loss")


def reward_accuracy_figure(df: pd.DataFrame) -> go.Figure:
    return line_figure(df, {"rm/accuracy": ("train", TRAIN_COLOR), "val/accuracy": ("validation", VAL_COLOR)},
                       "Accuracy (r_chosen > r_rejected)", "accuracy", y_range=(0, 1.02))


def reward_margin_figure(df: pd.DataFrame) -> go.Figure:
    return line_figure(df, {"rm/margin": ("train", TRAIN_COLOR), "val/margin": ("validation", VAL_COLOR)},
                       "Mean margin r_chosen - r_rejected", "margin")


def score_histogram(chosen: list[float], rejected: list[float], title: str = "Validation scores") -> go.Figure:
    """Overlaid histograms of chosen and rejected scores on shared bins: separation = a useful RM."""
    if not chosen and not rejected:
        return _empty(title, "no validation scores yet")
    lo, hi = min(chosen + rejected), max(chosen + rejected)
    size = (hi - lo) / 30 if hi > lo else 1.0
    bins = dict(start=lo, end=hi + size, size=size)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=chosen, name=f"chosen (n={len(chosen)})", xbins=bins, opacity=0.6,
                               marker_color=CHOSEN_COLOR))
    fig.add_trace(go.Histogram(x=rejected, name=f"rejected (n={len(rejected)})", xbins=bins, opacity=0.6,
                               marker_color=REJECTED_COLOR))
    fig.update_layout(title=title, barmode="overlay", height=300, margin=dict(l=40, r=10, t=40, b=40),
                      xaxis_title="score", yaxis_title="pairs", legend=dict(orientation="h", y=-0.25))
    return fig
