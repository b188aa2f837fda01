"""Evaluation metrics as AST reports them, in numpy only (no scikit-learn, no scipy).

- mAP: per-class average precision as sklearn's `average_precision_score` (step-wise, no
  interpolation: sum over thresholds of (R_n - R_{n-1}) * P_n, tied scores form one threshold),
  averaged over the classes that have at least one positive; the others are skipped and
  counted (an AudioSet eval subset may lack rare classes).
- AUC: per-class ROC AUC as sklearn's `roc_auc_score` (tied scores count one half), averaged
  over classes having both positives and negatives.
- d-prime: sqrt(2) * Phi^-1(mean AUC), as AST computes it from the class-averaged AUC.
- accuracy: top-1, for single-label data; top5_accuracy beside it where there are more than 5
  classes (VGGSound and VoxCeleb1 identification report both). Ties are broken as argmax breaks
  them, the lower class index first, so that top-1 is top-k at k = 1.

`scores` are (N, K) logits or probabilities (only their order matters for AP/AUC); `targets`
are (N, K) multi-hot for multi-label data, (N,) class indices or (N, K) one-hot otherwise.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def metric_name(multi_label: bool) -> str:
    """The headline metric of a dataset: mAP for multi-label (AudioSet), accuracy otherwise."""
    return "mAP" if multi_label else "accuracy"


def _as_2d(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.ndim == 1:
        scores, targets = scores[:, None], targets.reshape(-1, 1)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, K)")
    return scores, targets > 0.5  # multi-hot may arrive as float (mixup-free eval labels)


def _binary_ap(score: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    # The last index of each run of equal scores: one threshold per distinct score.
    last = np.r_[np.flatnonzero(np.diff(score) != 0), score.size - 1]
    tp = np.cumsum(positive)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_step * precision))


def _rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs) != 0) + 1]  # first index of each tie group
    ends = np.r_[starts[1:], xs.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty_like(mean_rank, shape=x.shape)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _binary_auc(score: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    # Mann-Whitney U from the positives' rank sum; mean ranks make a tie count one half.
    u = _rank_average(score)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(scores, targets) -> np.ndarray:
    """(N, K), (N, K) -> (K,) AP per class; NaN for a class without positives."""
    scores, targets = _as_2d(scores, targets)
    return np.array([_binary_ap(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])


def roc_auc(scores, targets) -> np.ndarray:
    """(N, K), (N, K) -> (K,) ROC AUC per class; NaN for a class lacking positives or negatives."""
    scores, targets = _as_2d(scores, targets)
    return np.array([_binary_auc(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])


def _nanmean(values: np.ndarray) -> tuple[float, int]:
    """Mean over the defined entries and how many were skipped."""
    defined = values[~np.isnan(values)]
    skipped = int(values.size - defined.size)
    return (float(defined.mean()) if defined.size else math.nan), skipped


def mean_average_precision(scores, targets) -> float:
    """AudioSet mAP; classes without positives are skipped (`compute_metrics` reports how many)."""
    return _nanmean(average_precision(scores, targets))[0]


def d_prime(auc: float) -> float:
    """sqrt(2) * inverse normal CDF of the AUC; +-inf at AUC 1 / 0, NaN for NaN."""
    if math.isnan(auc):
        return math.nan
    if auc <= 0.0 or auc >= 1.0:
        return math.copysign(math.inf, auc - 0.5)
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def accuracy(scores, targets) -> float:
    """Top-1 accuracy; targets as (N,) class indices or (N, K) one-hot."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if targets.ndim == 2:
        targets = targets.argmax(axis=1)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be (N, K) and targets (N,), got {scores.shape}, {targets.shape}"
        )
    return float((scores.argmax(axis=1) == targets).mean())


def top_k_accuracy(scores, targets, k: int) -> float:
    """The share of clips whose class is among the k highest scores (ties: the lower class index
    ranks first, as argmax takes it); targets as for `accuracy`."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if targets.ndim == 2:
        targets = targets.argmax(axis=1)
    rows = np.arange(scores.shape[0])
    own = scores[rows, targets][:, None]
    before = np.arange(scores.shape[1])[None, :] < targets[:, None]
    rank = (scores > own).sum(axis=1) + ((scores == own) & before).sum(axis=1)  # classes ranked above it
    return float((rank < k).mean())


def compute_metrics(scores, targets, multi_label: bool) -> dict:
    """Multi-label: {"mAP", "AUC", "d_prime", "classes_skipped"}; else {"accuracy"}, and
    "top5_accuracy" where there are more than 5 classes. The headline key is
    `metric_name(multi_label)`."""
    if not multi_label:
        out = {"accuracy": accuracy(scores, targets)}
        if np.asarray(scores).shape[1] > 5:
            out["top5_accuracy"] = top_k_accuracy(scores, targets, 5)
        return out
    mean_ap, skipped = _nanmean(average_precision(scores, targets))
    mean_auc, _ = _nanmean(roc_auc(scores, targets))
    return dict(mAP=mean_ap, AUC=mean_auc, d_prime=d_prime(mean_auc), classes_skipped=skipped)
