"""The reward-hacking detector: does the proxy (reward-model score) keep rising while the gold
judge falls? Pure functions on plain sequences; no gradio, no files.

Over-optimisation (Gao et al. 2022) shows as a proxy score that keeps climbing while the true
objective, here the gold judge, peaks and then declines. We fit least-squares lines to both over
the last `window` steps and fire only when both slopes are significant in opposite directions
(one-sided t-tests on the slope). Requiring significance on both keeps it quiet on noise and on a
healthy run where both rise; requiring a window keeps an early dip from firing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Trend:
    slope: float      # units per step
    p_up: float       # one-sided p-value of "slope > 0"
    p_down: float     # one-sided p-value of "slope < 0"


@dataclass
class Verdict:
    hacking: bool
    message: str
    proxy: Trend | None = None
    gold: Trend | None = None
    window: int = 0
    gold_peak_step: float | None = None


# ---------------------------------------------------------------- Student t without scipy
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


# ---------------------------------------------------------------- trends
def _finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def slope_trend(x: list[float], y: list[float]) -> Trend | None:
    """Least-squares slope of y on x with one-sided t-test p-values; None below 3 points."""
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return None
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx
    resid = sum((b - my - slope * (a - mx)) ** 2 for a, b in zip(x, y))
    se = math.sqrt(resid / (n - 2) / sxx)
    if se == 0:  # a perfect line: the direction is certain
        t = math.inf if slope > 0 else -math.inf if slope < 0 else 0.0
    else:
        t = slope / se
    p_up = t_sf(t, n - 2) if t != 0 else 0.5
    return Trend(slope, p_up, 1.0 - p_up if t != 0 else 0.5)


def detect(steps: list[float], proxy: list, gold: list, kl: list | None = None, window: int = 20,
           alpha: float = 0.01, min_points: int = 8) -> Verdict:
    """Fire when, over the last `window` steps with both values, proxy rises and gold falls, each
    at one-sided significance `alpha`. `kl` (optional) names the KL where gold peaked."""
    kl = kl if kl is not None else [None] * len(steps)
    pts = [(s, p, g, k) for s, p, g, k in zip(steps, proxy, gold, kl) if _finite(s, p, g)]
    if not pts:
        return Verdict(False, "")
    tail = pts[-window:]
    if len(tail) < min_points:
        return Verdict(False, f"Over-optimisation check: waiting for {min_points} steps with a gold score "
                              f"({len(tail)} so far).", window=len(tail))
    xs = [float(s) for s, *_ in tail]
    proxy_t = slope_trend(xs, [float(p) for _, p, _, _ in tail])
    gold_t = slope_trend(xs, [float(g) for _, _, g, _ in tail])
    peak = max(pts, key=lambda r: r[2])
    if proxy_t is None or gold_t is None:
        return Verdict(False, "", proxy_t, gold_t, len(tail))
    fired = proxy_t.p_up < alpha and gold_t.p_down < alpha
    if fired:
        at_kl = f", KL {peak[3]:.2f}" if _finite(peak[3]) else ""
        msg = (f"**Reward hacking likely.** Over the last {len(tail)} steps the reward-model score rose "
               f"({proxy_t.slope:+.3g}/step, p={proxy_t.p_up:.1g}) while the gold score fell "
               f"({gold_t.slope:+.3g}/step, p={gold_t.p_down:.1g}). The policy is exploiting the reward "
               f"model rather than getting better. Gold peaked at step {peak[0]:.0f}{at_kl}: consider a "
               f"checkpoint near there, a larger kl_coef or a lower kl_target.")
    else:
        # No numbers here: a message that stays the same costs the page nothing to keep showing.
        msg = f"No sign of over-optimisation over the last {len(tail)} steps: score and gold are not diverging."
    return Verdict(fired, msg, proxy_t, gold_t, len(tail), float(peak[0]))
