"""Multinomial logistic regression (softmax) trained by momentum gradient descent.

Why this model: it is convex, fast in numpy, deterministic, and its knobs mean what the
spec says. ``steps`` is the exact number of parameter updates; ``learning_rate`` is the
step size of heavy-ball momentum gradient descent (momentum 0.9):

    v <- 0.9 * v - learning_rate * grad;   W <- W + v

The objective is mean cross-entropy plus ``l2 / 2 * ||W||^2`` (biases are not
penalised). With ``batch_size`` each step uses a mini-batch drawn without replacement
from a seeded RNG (reshuffled every epoch); otherwise each step uses the full batch.
The feature matrix stays float32 (the two matrix products per step are memory-bound);
parameters, softmax and updates are float64; weights are stored as float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reconciler.local.trainer.config import TrainConfig
from reconciler.local.trainer.errors import TrainingError

MOMENTUM = 0.9


@dataclass
class Fit:
    """Learned parameters and the objective at the end of training."""

    weights: np.ndarray  # (D, K) float64
    bias: np.ndarray  # (K,) float64
    final_loss: float


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, l2: float,
              sample_weight: np.ndarray | None = None) -> float:
    """Mean (optionally weighted) cross-entropy plus the L2 penalty."""
    p = softmax((x @ w.astype(x.dtype)).astype(np.float64) + b)
    nll = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))
    data = float(np.average(nll, weights=sample_weight))
    return data + 0.5 * l2 * float((w * w).sum())


def fit_softmax(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: TrainConfig,
    *,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    sample_weight: np.ndarray | None = None,
    progress: Callable[[float], None] | None = None,
) -> Fit:
    """Train on standardised features ``x`` (N, D) with integer labels ``y`` in [0, n_classes).

    ``init`` starts from earlier (W, b) (fine-tuning). ``sample_weight`` (N,) re-weights the
    mean loss (the detector balances background against objects with it). ``progress(f)``
    is called every few steps with the fraction of steps done; it may raise to stop the run.
    """
    n, d = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if init is None:
        w = np.zeros((d, n_classes))
        b = np.zeros(n_classes)
    else:
        w = init[0].astype(np.float64).copy()
        b = init[1].astype(np.float64).copy()
    sw = np.ones(n) if sample_weight is None else sample_weight.astype(np.float64)
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    vw = np.zeros_like(w)
    vb = np.zeros_like(b)
    rng = np.random.default_rng(cfg.seed)
    batch = cfg.batch_size if cfg.batch_size and cfg.batch_size < n else None
    order = np.arange(n)
    cursor = n
    every = max(1, cfg.steps // 50)
    # A learning rate that diverges overflows to inf/nan: that is refused below with a one-line
    # error, not printed as numpy warnings on the user's terminal, and stops the run early.
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(cfg.steps):
            if batch is None:
                xb, yb, wb = x, onehot, sw
            else:
                if cursor + batch > n:
                    order = rng.permutation(n)
                    cursor = 0
                idx = np.sort(order[cursor : cursor + batch])
                cursor += batch
                xb, yb, wb = x[idx], onehot[idx], sw[idx]
            p = softmax((xb @ w.astype(np.float32)).astype(np.float64) + b)
            g = (p - yb) * (wb / wb.sum())[:, None]
            grad_w = (xb.T @ g.astype(np.float32)).astype(np.float64) + cfg.l2 * w
            grad_b = g.sum(axis=0)
            vw *= MOMENTUM
            vw -= cfg.learning_rate * grad_w
            vb *= MOMENTUM
            vb -= cfg.learning_rate * grad_b
            w += vw
            b += vb
            if progress is not None and ((step + 1) % every == 0 or step + 1 == cfg.steps):
                progress((step + 1) / cfg.steps)
            if (step + 1) % every == 0 and not np.isfinite(b).all():
                break
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise TrainingError(
            f"training.config.learning_rate: training diverged with {cfg.learning_rate!r}; use a smaller value"
        )
    return Fit(w, b, objective(x, y, w, b, cfg.l2, sw))


def predict_proba(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) for standardised features."""
    return softmax(x.astype(np.float32, copy=False) @ w + b)
