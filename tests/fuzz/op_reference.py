"""float64 references of the tensor ops, with NaN and infinity where the math
puts them (no BLAS: explicit sums, so 0 * inf is NaN exactly as in C).

They take and return numpy arrays; the fuzz tests compare with `close`.
"""
from __future__ import annotations

import math

import numpy as np


def matmul(a, b, ta=False, tb=False):
    a = np.asarray(a, np.float64).T if ta else np.asarray(a, np.float64)
    b = np.asarray(b, np.float64).T if tb else np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (a[:, :, None] * b[None, :, :]).sum(axis=1)


def matmul_bound(a, b, ta=False, tb=False):
    """sum_k |a_ik b_kj|: the scale of rounding errors in c_ij."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.nan_to_num(matmul(np.abs(a), np.abs(b), ta, tb), nan=0.0, posinf=0.0)


def gelu(x):
    x = np.asarray(x, np.float64)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore", invalid="ignore"):
        return x / (1.0 + np.exp(-2.0 * u))


def softmax(x, causal_rows=0):
    """Softmax over the last axis; causal_rows = Tq masks [.., Tq, Tk] blocks."""
    x = np.asarray(x, np.float64)
    cols = x.shape[-1]
    rows = x.reshape(-1, cols).copy()
    keep = np.ones_like(rows, dtype=bool)
    if causal_rows:
        for r in range(rows.shape[0]):
            i = r % causal_rows
            keep[r, i + cols - causal_rows + 1:] = False
    rows[~keep] = -np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(rows - rows.max(axis=1, keepdims=True))
        y = e / e.sum(axis=1, keepdims=True)
    return y.reshape(x.shape)


def layernorm(x, g, b, eps):
    """(y, tolerance per element): the tolerance grows where the row is nearly
    constant, since float32's mean and variance are then mostly rounding."""
    x = np.asarray(x, np.float64)
    cols = x.shape[-1]
    rows = x.reshape(-1, cols)
    mean = rows.mean(axis=1, keepdims=True)
    var = ((rows - mean) ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    g64, b64 = np.asarray(g, np.float64), np.asarray(b, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        y = (rows - mean) * rstd * g64 + b64
        # float32's mean is off by about an ulp of the row's largest value, times rstd
        scale = np.abs(rows).max(axis=1, keepdims=True)
        tol = 5e-7 * cols * np.abs(g64) * scale * rstd + 1e-5 * np.abs(y) + 1e-6 * np.abs(b64) + 1e-30
    return y.reshape(x.shape), np.nan_to_num(tol.reshape(x.shape), nan=np.inf, posinf=np.inf)


def cross_entropy(logits, targets):
    """Mean over the counted rows (-100 ignored), or None if none counts."""
    logits = np.asarray(logits, np.float64)
    losses = []
    for row, t in zip(logits, targets):
        if t == -100:
            continue
        m = row.max()
        with np.errstate(over="ignore"):
            losses.append(m + math.log(np.exp(row - m).sum()) - row[t])
    return None if not losses else float(np.mean(losses))


def attention(q, k, v, n_head, causal):
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    Tq, C = q.shape
    Tk = k.shape[0]
    hd = C // n_head
    y = np.zeros((Tq, C))
    for h in range(n_head):
        cols = slice(h * hd, (h + 1) * hd)
        scores = q[:, cols] @ k[:, cols].T / math.sqrt(hd)
        if causal:
            for i in range(Tq):
                scores[i, i + Tk - Tq + 1:] = -np.inf
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        y[:, cols] = p @ v[:, cols]
    return y


def attention_score_bound(q, k, n_head):
    """The largest |q_h . k_h| / sqrt(hd): past float32's range, the scores overflow."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    hd = q.shape[1] // n_head
    return max(np.abs(q[:, h * hd:(h + 1) * hd] @ k[:, h * hd:(h + 1) * hd].T).max() / math.sqrt(hd)
               for h in range(n_head))
