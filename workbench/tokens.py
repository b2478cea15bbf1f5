"""Token heatmaps as escaped HTML: a response's tokens coloured by one per-token quantity.

Every piece of text that reaches the page (tokens, numbers, labels) goes through html.escape, so
a sampled `<script>` token shows as the characters it is, never as markup (docs/architecture.md,
"Conventions"). Colours: green for positive, red for negative, intensity by |value| / scale.
Each token's numbers are in its title attribute (shown on hover).
"""
from __future__ import annotations

import html
import math

from .ppo_plots import NEG_COLOR, POS_COLOR

# quantity key in tokens.jsonl -> symbol shown to the user
QUANTITIES = {"advantage": "A_t", "reward": "r_t", "kl": "KL_t", "value": "V_t", "return": "G_t"}
HOVER_KEYS = ("advantage", "reward", "kl", "value", "return", "logprob", "ref_logprob")
HOVER_NAMES = {**QUANTITIES, "logprob": "logπ", "ref_logprob": "logπ_ref"}


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def color_for(value, scale: float) -> str:
    """CSS background for a value: the sign picks the hue, |value|/scale the opacity."""
    v = _num(value)
    if v is None or scale <= 0 or v == 0:
        return "transparent"
    r, g, b = _rgb(POS_COLOR if v > 0 else NEG_COLOR)
    alpha = 0.12 + 0.73 * min(1.0, abs(v) / scale)
    return f"rgba({r},{g},{b},{alpha:.2f})"


def scale_of(values) -> float:
    finite = [abs(v) for v in (_num(x) for x in values) if v is not None]
    return max(finite) if finite else 0.0


def show_token(token: str) -> str:
    """The token as visible text: newlines and tabs as symbols (so a token is never invisible)."""
    if token == "":
        return "∅"
    return token.replace("\n", "↵\n").replace("\t", "⇥")


def hover_text(record: dict, i: int) -> str:
    token = (record.get("tokens") or [""])[i]
    parts = [f"#{i} {token!r}"]
    for key in HOVER_KEYS:
        vals = record.get(key) or []
        v = _num(vals[i]) if i < len(vals) else None
        if v is not None:
            parts.append(f"{HOVER_NAMES[key]} = {v:+.4f}")
    return "\n".join(parts)


def token_spans(record: dict, quantity: str = "advantage", scale: float | None = None) -> str:
    """The response as one <span> per token, coloured by `quantity`, numbers in the title."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
    tokens = record.get("tokens") or []
    values = list(record.get(quantity) or [])
    scale = scale_of(values) if scale is None else scale
    out = []
    for i, tok in enumerate(tokens):
        v = _num(values[i]) if i < len(values) else None
        data = "" if v is None else v
        out.append(f'<span class="tok" style="background:{color_for(v, scale)}" '
                   f'title="{html.escape(hover_text(record, i), quote=True)}" data-value="{data}">'
                   f"{html.escape(show_token(str(tok)))}</span>")
    return "".join(out)


def legend_html(quantity: str, scale: float) -> str:
    name = html.escape(QUANTITIES.get(quantity, quantity))
    swatches = "".join(f'<span class="swatch" style="background:{color_for(f * scale, scale)}">'
                       f"{html.escape(f'{f * scale:+.3g}')}</span>"
                       for f in (-1.0, -0.5, -0.1, 0.1, 0.5, 1.0)) if scale > 0 else "<span>all zero</span>"
    return (f'<div class="token-legend" style="font-size:12px;margin:4px 0;display:flex;gap:4px;'
            f'align-items:center"><b>{name}</b>: red negative, green positive · {swatches}'
            f'<span style="color:#888">· hover a token for all its numbers</span></div>')


def token_heatmap_html(record: dict | None, quantity: str = "advantage", scale: float | None = None) -> str:
    """Legend + coloured tokens of one sample, as a self-contained, escaped HTML fragment."""
    if not record:
        return '<div class="token-view" style="color:#888">No sample to show.</div>'
    values = record.get(quantity) or []
    scale = scale_of(values) if scale is None else scale
    body = token_spans(record, quantity, scale)
    return (f'{legend_html(quantity, scale)}'
            f'<div class="token-view" style="white-space:pre-wrap;font-family:monospace;line-height:1.9;'
            f'font-size:15px;padding:6px;border:1px solid #ddd;border-radius:6px">{body}</div>')
