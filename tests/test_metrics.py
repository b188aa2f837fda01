import math

import numpy as np
import pytest

from c2ftrain.metrics import (
    accuracy,
    average_precision,
    d_prime,
    compute_metrics,
    mean_average_precision,
    metric_name,
    roc_auc,
    top_k_accuracy,
)


def brute_force_ap(score, positive):
    """Precision/recall at every distinct threshold (predict positive when score >= it),
    AP = sum of recall gain x precision, walking thresholds from high to low."""
    ap, last_recall = 0.0, 0.0
    for threshold in sorted(set(score.tolist()), reverse=True):
        predicted = score >= threshold
        tp = np.sum(predicted & positive)
        recall = tp / positive.sum()
        ap += (recall - last_recall) * tp / predicted.sum()
        last_recall = recall
    return ap


def brute_force_auc(score, positive):
    """Mann-Whitney: over every (positive, negative) pair, 1 if ordered right, 1/2 if tied."""
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def random_case(seed, n=60, k=6, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, k))
    if ties:
        scores = np.round(scores, 0)  # a handful of distinct values: many ties
    targets = (rng.random((n, k)) < rng.uniform(0.1, 0.6, size=k)).astype(np.float32)
    targets[0] = 1  # every class has a positive...
    targets[1] = 0  # ... and a negative
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_ap_and_auc_against_brute_force(seed, ties):
    scores, targets = random_case(seed, ties=ties)
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    for k in range(scores.shape[1]):
        positive = targets[:, k] > 0
        assert ap[k] == pytest.approx(brute_force_ap(scores[:, k], positive), abs=1e-12)
        assert auc[k] == pytest.approx(brute_force_auc(scores[:, k], positive), abs=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(ap.mean())


def test_hand_computed_values():
    # scikit-learn's documented example: AP 0.8333..., ROC AUC 0.75.
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert average_precision(s, y)[0] == pytest.approx(5 / 6)
    assert roc_auc(s, y)[0] == pytest.approx(0.75)
    # All scores tied: one threshold, precision = prevalence; AUC one half.
    y, s = np.array([0, 1, 0, 1, 1]), np.full(5, 0.3)
    assert average_precision(s, y)[0] == pytest.approx(3 / 5)
    assert roc_auc(s, y)[0] == pytest.approx(0.5)
    # Perfect and reversed rankings.
    y, s = np.array([1, 1, 0, 0]), np.array([4.0, 3.0, 2.0, 1.0])
    assert average_precision(s, y)[0] == 1.0 and roc_auc(s, y)[0] == 1.0
    assert roc_auc(-s, y)[0] == 0.0
    assert average_precision(-s, y)[0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_classes_without_positives_are_skipped_and_counted():
    scores, targets = random_case(3, k=5)
    targets[:, 2] = 0  # no positives: AP and AUC undefined
    targets[:, 4] = 1  # no negatives: AUC undefined, AP defined (= 1)
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    assert np.isnan(ap[2]) and not np.isnan(ap[4]) and ap[4] == 1.0
    assert np.isnan(auc[2]) and np.isnan(auc[4])
    result = compute_metrics(scores, targets, multi_label=True)
    assert result["classes_skipped"] == 1
    assert result["mAP"] == pytest.approx(np.mean(ap[[0, 1, 3, 4]]))
    assert result["AUC"] == pytest.approx(np.mean(auc[[0, 1, 3]]))
    assert result["d_prime"] == pytest.approx(d_prime(result["AUC"]))


def test_d_prime_against_scipy():
    norm = pytest.importorskip("scipy.stats").norm
    for auc in [0.5, 0.6, 0.75, 0.9, 0.97, 0.999, 0.2]:
        assert d_prime(auc) == pytest.approx(math.sqrt(2) * norm.ppf(auc), rel=1e-9, abs=1e-12)
    assert d_prime(0.5) == 0.0
    assert d_prime(1.0) == math.inf and d_prime(0.0) == -math.inf
    assert math.isnan(d_prime(math.nan))


def test_accuracy_and_single_label_metrics():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 0, 0, 1])  # right, right, wrong, wrong
    assert accuracy(scores, labels) == 0.5
    assert accuracy(scores, np.eye(3)[labels]) == 0.5  # one-hot targets
    assert compute_metrics(scores, labels, multi_label=False) == {"accuracy": 0.5}
    with pytest.raises(ValueError):
        accuracy(scores, labels[:3])


def test_top_5_accuracy_against_a_sort_by_hand():
    """Where there are more than 5 classes: the class among the 5 highest scores, ranked as
    Python's sort ranks (score descending, then class index), ties included."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (200, 9)).astype(float)  # few distinct values: many ties
    labels = rng.integers(0, 9, 200)

    def in_top(row, label, k):
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))
        return label in ranked[:k]

    for k in (1, 3, 5):
        by_hand = sum(in_top(s, t, k) for s, t in zip(scores.tolist(), labels.tolist())) / len(labels)
        assert top_k_accuracy(scores, labels, k) == by_hand
    assert top_k_accuracy(scores, labels, 1) == accuracy(scores, labels)
    assert top_k_accuracy(scores, np.eye(9)[labels], 5) == top_k_accuracy(scores, labels, 5)
    assert compute_metrics(scores, labels, multi_label=False) == {
        "accuracy": accuracy(scores, labels), "top5_accuracy": top_k_accuracy(scores, labels, 5)}
    assert set(compute_metrics(scores[:, :5], labels % 5, multi_label=False)) == {"accuracy"}  # 5 classes: always 1


def test_metric_names_and_metric_keys():
    assert metric_name(True) == "mAP" and metric_name(False) == "accuracy"
    scores, targets = random_case(4)
    result = compute_metrics(scores, targets, multi_label=True)
    assert {"mAP", "AUC", "d_prime"} <= set(result) and metric_name(True) in result
    with pytest.raises(ValueError):
        average_precision(scores, targets[:, :3])
