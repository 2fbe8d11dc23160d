"""Drift between two TFDV statistics: Jensen-Shannon divergence on numeric histograms, L-infinity on categories.

Used three ways: this run's train split against the last blessed run's (drift), train against
val and test (skew between splits), and a batch of serving requests against the training
statistics (serving skew, see `serving_skew`). Working on the statistics protos rather than on
the data means the baseline is one small file that push keeps beside each published model.

Two histograms rarely share bucket edges (TFDV picks 10 equal-width buckets over each dataset's
own range), so both are spread over the union of their edges, each bucket's count assumed
uniform within it, before comparing: the same approximation TFDV's own comparator makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow_metadata.proto.v0 import statistics_pb2

from radflow import examples as ex
from radflow.components.validate.config import DriftThresholds

JS_DIVERGENCE = "Jensen-Shannon divergence"
LINF_DISTANCE = "L-infinity distance"
# label duplicates label_name; comparing the names keeps the report readable and counts each shift once.
NOT_COMPARED = (ex.LABEL,)


@dataclass(frozen=True)
class Drift:
    """One feature compared between a current and a reference dataset.

    Args:
        feature: the feature name.
        metric: JS_DIVERGENCE (numeric) or LINF_DISTANCE (categorical).
        value: the distance found.
        threshold: the most that is allowed.
        detail: what moved, in words: the means, or the value whose share changed most.
    """

    feature: str
    metric: str
    value: float
    threshold: float
    detail: str

    @property
    def exceeded(self) -> bool:
        return self.value > self.threshold

    def describe(self, comparison: str) -> str:
        """One line naming the comparison, the feature, what was expected and what was found."""
        return (
            f"{comparison}, feature {self.feature!r}: {self.metric} — expected at most {self.threshold:g}; "
            f"found {self.value:.3f} ({self.detail})"
        )


def _features(dataset: statistics_pb2.DatasetFeatureStatistics) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    return {".".join(f.path.step) or f.name: f for f in dataset.features}


def standard_histogram(feature: statistics_pb2.FeatureNameStatistics) -> list[tuple[float, float, float]]:
    """The (low, high, count) buckets of a numeric feature's equal-width histogram; [] if it has none."""
    for hist in feature.num_stats.histograms:
        if hist.type == statistics_pb2.Histogram.STANDARD:
            return [(b.low_value, b.high_value, b.sample_count) for b in hist.buckets]
    return []


def value_shares(feature: statistics_pb2.FeatureNameStatistics) -> dict[str, float]:
    """Each value's share of a categorical (string) feature, from its rank histogram."""
    counts = {b.label: b.sample_count for b in feature.string_stats.rank_histogram.buckets}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def _rebucket(buckets: list[tuple[float, float, float]], edges: np.ndarray) -> np.ndarray:
    """Spreads buckets over the intervals between `edges`, uniformly within each bucket; returns shares."""
    mass = np.zeros(max(len(edges) - 1, 1))
    for low, high, count in buckets:
        if high > low:
            overlap = np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)
            mass[: len(overlap)] += count * overlap / (high - low)
        else:  # a point mass (every value equal): the interval that holds it
            mass[min(max(int(np.searchsorted(edges, low, side="right")) - 1, 0), len(mass) - 1)] += count
    total = mass.sum()
    return mass / total if total else mass


def js_divergence(p: list[tuple[float, float, float]], q: list[tuple[float, float, float]]) -> float:
    """Jensen-Shannon divergence, base 2 (0 = same distribution, 1 = disjoint), of two bucketed histograms.

    Args:
        p, q: (low, high, count) buckets, e.g. from `standard_histogram`.

    Returns:
        The divergence; 0.0 if either histogram is empty.
    """
    if not p or not q:
        return 0.0
    edges = np.unique([v for low, high, _ in p + q for v in (low, high)])
    a, b = _rebucket(p, edges), _rebucket(q, edges)
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return max(0.0, (kl(a) + kl(b)) / 2)


def linf_distance(p: dict[str, float], q: dict[str, float]) -> tuple[float, str]:
    """The largest change in any value's share, and that value.

    Args:
        p, q: value -> share.

    Returns:
        (distance, the value that moved most).
    """
    values = sorted(set(p) | set(q))
    if not values:
        return 0.0, ""
    worst = max(values, key=lambda v: abs(p.get(v, 0.0) - q.get(v, 0.0)))
    return abs(p.get(worst, 0.0) - q.get(worst, 0.0)), worst


def compare(
    current: statistics_pb2.DatasetFeatureStatistics,
    reference: statistics_pb2.DatasetFeatureStatistics,
    thresholds: DriftThresholds,
) -> list[Drift]:
    """Compares every feature the two datasets share (except `label`, covered by `label_name`).

    Args:
        current: the statistics under test (one dataset of a DatasetFeatureStatisticsList).
        reference: what they should look like.
        thresholds: the limits, stored in each Drift.

    Returns:
        One Drift per shared feature, in feature-name order, exceeded or not.
    """
    cur, ref = _features(current), _features(reference)
    drifts = []
    for name in sorted(set(cur) & set(ref)):
        if name in NOT_COMPARED:
            continue
        a, b = cur[name], ref[name]
        if a.HasField("string_stats") or b.HasField("string_stats"):
            p, q = value_shares(a), value_shares(b)
            value, worst = linf_distance(p, q)
            detail = f"{worst!r}: {q.get(worst, 0.0):.1%} -> {p.get(worst, 0.0):.1%}" if worst else "no values"
            drifts.append(Drift(name, LINF_DISTANCE, value, thresholds.max_linf_distance, detail))
        else:
            value = js_divergence(standard_histogram(a), standard_histogram(b))
            detail = f"mean {b.num_stats.mean:.4g} -> {a.num_stats.mean:.4g}"
            drifts.append(Drift(name, JS_DIVERGENCE, value, thresholds.max_js_divergence, detail))
    return drifts
