"""Pure plot builders for the PPO and Inspect tabs: a DataFrame in, a plotly Figure out.

Run-level frames are metrics.jsonl rows (workbench.plots.metrics_frame: one row per step, a
column per metric name of docs/architecture.md). Token-level frames come from tokens.jsonl records via
`token_frame` (one row per response position) and `advantage_frame` (samples x positions, long).

Figures are written as one dict and validated once (`_figure`): plotly's per-call validation in
add_trace/update_layout costs ~7x more, and the live tab rebuilds eight figures every step.
"""
from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

from .plots import metrics_frame  # noqa: F401  (re-exported: the PPO views build frames with it)

SCORE_COLOR, GOLD_COLOR = "#1f77b4", "#e6a700"
KL_COLOR, COEF_COLOR = "#9467bd", "#7f7f7f"
POLICY_COLOR, VALUE_COLOR, EXTRA_COLOR = "#1f77b4", "#ff7f0e", "#17becf"
POS_COLOR, NEG_COLOR = "#2ca02c", "#d62728"  # the sign colours, shared with workbench/tokens.py
RETURN_COLOR = "#8c564b"
HEIGHT = 300
MARGIN = dict(l=50, r=50, t=40, b=40)
# under the x axis title, so a long title and the legend never overlap
LEGEND = dict(orientation="h", y=-0.3, x=0, xanchor="left", yanchor="top")
LEGEND_MARGIN = dict(MARGIN, b=80)
ZERO_LINE = dict(type="line", xref="paper", x0=0, x1=1, y0=0, y1=0, line=dict(color="#bbb", width=1))


def _figure(traces: list[dict], layout: dict) -> go.Figure:
    # Written as plain dicts and not validated here: tests validate every builder's output once
    # (test_ppo_plots), and skipping plotly's validation makes a live redraw ~4x cheaper.
    return go.Figure(dict(data=traces, layout=layout), _validate=False)


def _axis(text: str, **kw) -> dict:
    return dict(title=dict(text=text), **kw)


def _empty_spec(title: str, message: str = "waiting for the first step") -> dict:
    return dict(data=[], layout=dict(title=dict(text=title), height=HEIGHT, margin=MARGIN, xaxis=dict(visible=False),
                                     yaxis=dict(visible=False), annotations=[
                                         dict(text=message, showarrow=False, font=dict(size=13, color="#888"))]))


def _empty(title: str, message: str = "waiting for the first step") -> go.Figure:
    spec = _empty_spec(title, message)
    return _figure(spec["data"], spec["layout"])


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and bool(df[col].notna().any())


def _list(s: pd.Series) -> list:
    return s.tolist()


def _as_figure(spec_fn):
    """A public builder (DataFrame -> Figure) from a spec builder (DataFrame -> {data, layout});
    the dashboard composes the specs, so it builds one Figure instead of eight."""
    def build(df: pd.DataFrame, *args, **kw) -> go.Figure:
        spec = spec_fn(df, *args, **kw)
        return _figure(spec["data"], spec["layout"])
    build.__name__, build.__doc__ = spec_fn.__name__.replace("_spec", "_figure"), spec_fn.__doc__
    return build


def lines_spec(df: pd.DataFrame, left: dict[str, tuple[str, str]], title: str, left_title: str,
               right: dict[str, tuple[str, str]] | None = None, right_title: str = "",
               x: str = "step", zero_line: bool = False) -> dict:
    """Lines of the `left` {column: (name, colour)} columns, and of `right` ones (dotted) on a second
    y axis, for quantities on different scales: score vs gold, KL vs its coefficient."""
    right = right or {}
    cols_l = [c for c in left if _has(df, c)]
    cols_r = [c for c in right if _has(df, c)]
    if df.empty or x not in df.columns or not (cols_l or cols_r):
        return _empty_spec(title)
    traces = []
    for cols, spec, secondary in ((cols_l, left, False), (cols_r, right, True)):
        for col in cols:
            d = df[[x, col]].dropna()
            name, color = spec[col]
            traces.append(dict(type="scatter", x=_list(d[x]), y=_list(d[col]), name=name,
                               mode="lines+markers" if len(d) < 30 else "lines", marker=dict(size=4),
                               line=dict(color=color, width=1.8, dash="dot" if secondary else "solid"),
                               yaxis="y2" if secondary else "y"))
    layout = dict(title=dict(text=title), height=HEIGHT, margin=LEGEND_MARGIN, hovermode="x unified", legend=LEGEND,
                  xaxis=_axis(x), yaxis=_axis(left_title))
    if cols_r:
        layout["yaxis2"] = _axis(right_title, overlaying="y", side="right", showgrid=False)
    if zero_line:
        layout["shapes"] = [ZERO_LINE]
    return dict(data=traces, layout=layout)


metric_lines = _as_figure(lines_spec)


# ---------------------------------------------------------------- run-level curves (by step)
def score_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"objective/score": ("RM score (proxy)", SCORE_COLOR)}, "Score and gold", "RM score",
                      {"objective/gold": ("gold", GOLD_COLOR)}, "gold")


def kl_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"objective/kl": ("KL(policy ‖ ref)", KL_COLOR)}, "KL and its coefficient",
                      "KL (nats / sequence)", {"objective/kl_coef": ("kl_coef β", COEF_COLOR)}, "β")


def loss_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"loss/policy": ("policy loss", POLICY_COLOR)}, "Losses", "policy loss",
                      {"loss/value": ("value loss", VALUE_COLOR)}, "value loss")


def clip_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"policy/clipfrac": ("policy clipfrac", POLICY_COLOR),
                           "val/clipfrac": ("value clipfrac", VALUE_COLOR)}, "Clipping and approx KL", "fraction",
                      {"policy/approx_kl": ("approx KL", KL_COLOR)}, "approx KL")


def entropy_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"policy/entropy": ("entropy / token", POLICY_COLOR)}, "Entropy", "nats / token",
                      {"objective/entropy": ("−logprob / sequence", EXTRA_COLOR)}, "nats / sequence")


def explained_variance_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"val/explained_variance": ("explained variance", VALUE_COLOR)},
                      "Critic explained variance", "1 − Var(G−V)/Var(G)", zero_line=True)


def eps_spec(df: pd.DataFrame) -> dict:
    return lines_spec(df, {"eps": ("episodes / s", SCORE_COLOR)}, "Throughput", "episodes / s")


def overoptimisation_spec(df: pd.DataFrame, smooth: int = 5) -> dict:
    """Proxy (RM score) and gold against KL from the reference: the over-optimisation curve.

    Each step is a faint marker; a line through `smooth`-step rolling means shows the path (raw
    steps are too noisy to join). A healthy run climbs in both; reward hacking shows as gold
    turning down while the proxy climbs."""
    title = "Over-optimisation: score and gold vs KL"
    if not (_has(df, "objective/kl") and (_has(df, "objective/score") or _has(df, "objective/gold"))):
        return _empty_spec(title)
    d = df.sort_values("step")
    traces = []
    for col, name, color, axis in (("objective/score", "RM score (proxy)", SCORE_COLOR, "y"),
                                   ("objective/gold", "gold", GOLD_COLOR, "y2")):
        if not _has(d, col):
            continue
        part = d[["step", "objective/kl", col]].dropna()
        roll = part[["objective/kl", col]].rolling(smooth, min_periods=1).mean()
        traces.append(dict(type="scatter", x=_list(part["objective/kl"]), y=_list(part[col]), name=f"{name} (steps)",
                           mode="markers", marker=dict(size=5, color=color, opacity=0.35), yaxis=axis,
                           customdata=_list(part["step"]), showlegend=False,
                           hovertemplate="step %{customdata}<br>KL %{x:.3f}<br>" + name + " %{y:.3f}<extra></extra>"))
        traces.append(dict(type="scatter", x=_list(roll["objective/kl"]), y=_list(roll[col]), name=name,
                           mode="lines", line=dict(color=color, width=2.2, dash="dot" if axis == "y2" else "solid"),
                           yaxis=axis, hoverinfo="skip"))
    layout = dict(title=dict(text=title), height=HEIGHT, margin=LEGEND_MARGIN, hovermode="closest", legend=LEGEND,
                  xaxis=_axis("KL (nats / sequence)"), yaxis=_axis("RM score"),
                  yaxis2=_axis("gold", overlaying="y", side="right", showgrid=False))
    return dict(data=traces, layout=layout)


RUN_SPECS = (score_spec, kl_spec, loss_spec, clip_spec, entropy_spec, explained_variance_spec, eps_spec,
             overoptimisation_spec)
score_figure, kl_figure, loss_figure, clip_figure, entropy_figure, explained_variance_figure, eps_figure, \
    overoptimisation_figure = RUN_FIGURES = tuple(_as_figure(f) for f in RUN_SPECS)


def _axis_key(name: str) -> str:
    """Trace axis reference -> layout key: "x" -> "xaxis", "y3" -> "yaxis3"."""
    return name[0] + "axis" + name[1:]


def _key_text(traces: list[dict]) -> str:
    """Trace names in their colours ("━" solid, "┅" dotted), written into a subplot's title.
    One figure with eight plotly legends costs the browser ~30% more per redraw than with none."""
    keys = []
    for t in traces:
        if t.get("showlegend") is False:
            continue
        color = (t.get("line") or {}).get("color") or (t.get("marker") or {}).get("color") or "#444"
        mark = "┅" if (t.get("line") or {}).get("dash") in ("dot", "dash") else "━"
        keys.append(f"<span style='color:{color}'>{mark} {t.get('name', '')}</span>")
    return "  ".join(keys)


def combine(specs: list[dict], cols: int = 2, row_px: int = 320, gap_px: int = 90) -> go.Figure:
    """Lay figure specs out as one figure of subplots, each keeping its axes, title and shapes; the
    legend of each becomes coloured names in its title.

    Why: the browser redraws a plotly figure fully on every update (gradio calls react + resize),
    and eight separate figures cost ~5x one figure of eight subplots, which is what keeps the
    live curves within a second of the engine on a busy CPU.
    """
    rows = -(-len(specs) // cols)
    height = rows * row_px + 30
    gx, gy = 0.12, gap_px / height  # room between columns for a right axis and the next left axis
    w, h = (1 - gx * (cols - 1)) / cols, (1 - 30 / height - gy * (rows - 1)) / rows
    traces, layout = [], dict(height=height, margin=dict(l=50, r=50, t=50, b=40), hovermode="x unified",
                              annotations=[], shapes=[], showlegend=False)
    for i, spec in enumerate(specs):
        lay = spec["layout"]
        r, c = divmod(i, cols)
        x0, y1 = c * (w + gx), 1 - 30 / height - r * (h + gy)
        xd, yd = [x0, x0 + w], [y1 - h, y1]
        n = i + 1
        xa, ya, ya2 = ("x", "y", "y2") if n == 1 else (f"x{n}", f"y{2 * n - 1}", f"y{2 * n}")
        layout[_axis_key(xa)] = {**lay.get("xaxis", {}), "domain": xd, "anchor": ya}
        layout[_axis_key(ya)] = {**lay.get("yaxis", {}), "domain": yd, "anchor": xa}
        if "yaxis2" in lay:
            layout[_axis_key(ya2)] = {**lay["yaxis2"], "overlaying": ya, "anchor": xa, "side": "right"}
        for t in spec["data"]:
            traces.append({**t, "xaxis": xa, "yaxis": ya2 if t.get("yaxis") == "y2" else ya, "showlegend": False})
        title = (lay.get("title") or {}).get("text", "")
        layout["annotations"].append(dict(text=f"<b>{title}</b>   {_key_text(spec['data'])}", x=xd[0], y=yd[1] + 0.004,
                                          xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                                          showarrow=False, font=dict(size=12)))
        for note in lay.get("annotations", []):  # "waiting for the first step", centred in its subplot
            layout["annotations"].append({**note, "xref": "paper", "yref": "paper", "x": sum(xd) / 2, "y": sum(yd) / 2})
        for shape in lay.get("shapes", []):  # zero lines: across the subplot, at y = 0 of its axis
            layout["shapes"].append({**shape, "xref": "paper", "x0": xd[0], "x1": xd[1], "yref": ya})
    return _figure(traces, layout)


def dashboard_figure(df: pd.DataFrame) -> go.Figure:
    """All run-level curves of a metrics frame as one figure of subplots (see `combine`)."""
    return combine([spec(df) for spec in RUN_SPECS])


# ---------------------------------------------------------------- token-level views (one step)
TOKEN_COLUMNS = ["position", "token", "logprob", "ref_logprob", "kl", "reward", "value", "advantage", "return"]


def token_frame(record: dict) -> pd.DataFrame:
    """One tokens.jsonl record -> one row per response position, with r_t split into its KL part
    (−kl_coef·KL_t) and its score part (the rest: the score, on the last token only)."""
    toks = list(record.get("tokens") or [])
    n = len(toks)
    df = pd.DataFrame({"position": range(n), "token": toks})
    for key in TOKEN_COLUMNS[2:]:
        vals = list(record.get(key) or [])[:n]
        df[key] = pd.to_numeric(pd.Series(vals + [None] * (n - len(vals)), dtype=object), errors="coerce")
    beta = float(record.get("kl_coef") or 0.0)
    df["kl_part"] = -beta * df["kl"]
    df["score_part"] = (df["reward"] - df["kl_part"]).round(6)
    return df


def sign_colors(values, pos: str = POS_COLOR, neg: str = NEG_COLOR) -> list[str]:
    return [neg if (v is not None and v < 0) else pos for v in values]


def _labels(df: pd.DataFrame) -> list[str]:
    """Hover labels. Plotly reads tags in hover text as formatting (<b>, <a href>): tokens are
    escaped so a token like "<a href=...>" shows as typed."""
    return [html.escape(f"{p}: {t!r}") for p, t in zip(df["position"], df["token"])]


def token_reward_figure(df: pd.DataFrame, title: str = "Reward r_t per token") -> go.Figure:
    """Stacked bars: the KL part of r_t (−β·KL_t) and the score part (coloured by its sign), and
    a tick at r_t itself, so the score on the last token and the per-token KL penalty read apart."""
    if df.empty:
        return _empty(title, "no tokens")
    labels, pos = _labels(df), _list(df["position"])
    score = df["score_part"].where(df["score_part"].abs() > 1e-9)
    traces = [
        dict(type="bar", x=pos, y=_list(df["kl_part"]), name="−β·KL_t", marker=dict(color=KL_COLOR),
             customdata=labels, hovertemplate="%{customdata}<br>−β·KL_t %{y:.4f}<extra></extra>"),
        dict(type="bar", x=pos, y=[None if pd.isna(v) else v for v in score], name="score (last token)",
             marker=dict(color=sign_colors(score.fillna(0))), customdata=labels,
             hovertemplate="%{customdata}<br>score %{y:.4f}<extra></extra>"),
        dict(type="scatter", x=pos, y=_list(df["reward"]), name="r_t", mode="markers",
             marker=dict(color="#333", symbol="line-ew-open", size=16, line=dict(width=2)),
             customdata=labels, hovertemplate="%{customdata}<br>r_t %{y:.4f}<extra></extra>"),
    ]
    return _figure(traces, dict(title=dict(text=title), height=HEIGHT, margin=LEGEND_MARGIN, barmode="relative",
                                hovermode="closest", legend=LEGEND, xaxis=_axis("response position"),
                                yaxis=_axis("reward"), shapes=[ZERO_LINE]))


def token_values_figure(df: pd.DataFrame, title: str = "Value, advantage, return and KL per token") -> go.Figure:
    if df.empty:
        return _empty(title, "no tokens")
    labels, pos = _labels(df), _list(df["position"])
    traces = [dict(type="scatter", x=pos, y=_list(df[col]), name=name, mode="lines+markers", customdata=labels,
                   line=dict(color=color, dash=dash, width=1.8), marker=dict(size=5),
                   hovertemplate="%{customdata}<br>" + name + " %{y:.4f}<extra></extra>")
              for col, name, color, dash in (("value", "V_t", VALUE_COLOR, "solid"),
                                             ("advantage", "A_t", POLICY_COLOR, "solid"),
                                             ("return", "G_t", RETURN_COLOR, "dash"), ("kl", "KL_t", KL_COLOR, "dot"))]
    return _figure(traces, dict(title=dict(text=title), height=HEIGHT, margin=LEGEND_MARGIN, hovermode="closest",
                                legend=LEGEND, xaxis=_axis("response position"), shapes=[ZERO_LINE]))


def advantage_frame(records: list[dict], key: str = "advantage") -> pd.DataFrame:
    """Long frame (sample, position, token, value) of one quantity over a step's records."""
    rows = [{"sample": r.get("sample", i), "position": p, "token": tok, "value": v}
            for i, r in enumerate(records)
            for p, (tok, v) in enumerate(zip(r.get("tokens") or [], r.get(key) or []))]
    return pd.DataFrame(rows, columns=["sample", "position", "token", "value"])


def diverging_scale(pos: str = POS_COLOR, neg: str = NEG_COLOR) -> list:
    return [[0.0, neg], [0.5, "#ffffff"], [1.0, pos]]


def advantage_heatmap(df: pd.DataFrame, title: str = "Advantages A_t: samples × positions") -> go.Figure:
    """Heatmap centred on zero (negative red, positive green); positions past a response's end are blank."""
    if df.empty:
        return _empty(title, "no samples for this step")
    z = df.pivot(index="sample", columns="position", values="value").sort_index()
    text = df.pivot(index="sample", columns="position", values="token").reindex_like(z).map(
        lambda t: html.escape(t) if isinstance(t, str) else "")  # hover text: tags shown, not applied
    trace = dict(type="heatmap", z=z.astype(float).values.tolist(), x=list(z.columns),
                 y=[f"sample {s}" for s in z.index], text=text.values.tolist(),
                 colorscale=diverging_scale(), zmid=0, colorbar=dict(title=dict(text="A_t"), thickness=12),
                 hovertemplate="%{y}, position %{x}<br>token %{text}<br>A %{z:.4f}<extra></extra>")
    return _figure([trace], dict(title=dict(text=title), height=max(200, 90 + 30 * len(z)), margin=MARGIN,
                                 xaxis=_axis("response position"), yaxis=dict(autorange="reversed")))
