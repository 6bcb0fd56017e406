"""LASSO on a Gram matrix, and the lambda search of channel pruning (He et al., ICCV 2017).

With per-channel contributions ``Z_c`` (what input channel ``c`` adds to a layer's output) and
target ``Y``, channel selection solves

    min_beta  ||Y - sum_c beta_c Z_c||^2 / (2 ||Y||^2)  +  lam * ||beta||_1

which depends on the data only through ``G = Z^T Z / ||Y||^2`` and ``b = Z^T Y / ||Y||^2``: a
problem with as many unknowns as channels, solved here by proximal gradient (FISTA). ``lam`` is
dimensionless; at ``lam >= max|b|`` every ``beta`` is zero.
"""

from __future__ import annotations

import numpy as np


def lasso(gram: np.ndarray, xty: np.ndarray, lam: float, beta: np.ndarray | None = None, *, step: float | None = None, iters: int = 20000, tol: float = 1e-10) -> np.ndarray:
    """Minimise ``0.5 b^T G b - xty^T b + lam |b|_1`` by FISTA with adaptive restart.

    Vectorised (one ``G @ beta`` per step), so hundreds of channels cost milliseconds; the
    soft-thresholding step gives exact zeros. ``beta`` warm-starts it; ``step`` is the largest
    eigenvalue of ``gram`` (computed when not given).
    """
    p = len(xty)
    if step is None:
        step = float(np.linalg.eigvalsh(gram)[-1]) if p else 0.0
    x = np.zeros(p) if beta is None else beta.astype(np.float64).copy()
    if step <= 0.0:
        return np.zeros(p)
    y, t = x.copy(), 1.0
    for _ in range(iters):
        z = y - (gram @ y - xty) / step
        new = np.sign(z) * np.maximum(np.abs(z) - lam / step, 0.0)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        if np.dot(new - x, y - new) > 0.0:  # momentum points uphill: restart
            t_new, y = 1.0, new
        else:
            y = new + ((t - 1.0) / t_new) * (new - x)
        done = np.max(np.abs(new - x)) < tol
        x, t = new, t_new
        if done:
            break
    return x


def _count(beta: np.ndarray) -> int:
    return int(np.count_nonzero(beta))


def search(gram: np.ndarray, xty: np.ndarray, keep: int, *, max_steps: int = 60) -> tuple[np.ndarray, float]:
    """Channels to keep (a boolean mask with exactly ``keep`` True) and the lambda that chose them.

    Lambda starts small and doubles until at most ``keep`` coefficients are non-zero, then is
    bisected between the last two values until exactly ``keep`` are. When no lambda gives
    exactly ``keep`` (ties), the largest-lambda selection is topped up with the channels of
    largest ``|beta|`` at the smaller lambda.
    """
    p = len(xty)
    lam_max = float(np.max(np.abs(xty))) if p else 0.0
    if keep >= p or lam_max == 0.0:
        order = np.argsort(-np.abs(xty), kind="stable")
        mask = np.zeros(p, dtype=bool)
        mask[order[:keep]] = True
        return mask, 0.0
    step = float(np.linalg.eigvalsh(gram)[-1])
    lo, lo_beta = 0.0, None
    lam = lam_max / 1024.0
    beta = lasso(gram, xty, lam, step=step)
    steps = 0
    while _count(beta) > keep and steps < max_steps:
        lo, lo_beta = lam, beta
        lam *= 2.0
        beta = lasso(gram, xty, lam, beta, step=step)
        steps += 1
    hi, hi_beta = lam, beta
    while _count(hi_beta) != keep and steps < max_steps:
        mid = 0.5 * (lo + hi)
        beta = lasso(gram, xty, mid, hi_beta, step=step)
        if _count(beta) > keep:
            lo, lo_beta = mid, beta
        else:
            hi, hi_beta = mid, beta
        steps += 1
    fill = np.abs(lo_beta) if lo_beta is not None else np.abs(xty)
    order = np.lexsort((fill, np.abs(hi_beta), hi_beta != 0))[::-1]  # chosen first, then by |beta|
    mask = np.zeros(p, dtype=bool)
    mask[order[:keep]] = True
    return mask, hi
