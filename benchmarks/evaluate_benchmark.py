"""Cost of evaluate's patient bootstrap, against the straightforward copy-per-resample bootstrap.

radflow turns each resample of patients into a weight vector over images and computes every
metric with weights, so no resample copies the data. The baseline draws the same patients,
gathers their images into new arrays, and computes the same metrics on the copies. Both run on
a Kaggle-sized test split (624 images, ~3 per patient) with 1000 resamples; the intervals must
agree (same draws), and the ratio is the speed-up.

    .venv/bin/python benchmarks/evaluate_benchmark.py [--images 624] [--resamples 1000]

Target: at least as fast as the copy-per-resample baseline, with identical intervals.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from radflow.components.evaluate import metrics as mx


def baseline_intervals(y, scores, threshold, patients, n_resamples, seed=0):
    """The same patient draws as `bootstrap_intervals`, but every resample copies the drawn images."""
    groups = mx.patient_groups(patients)
    n_patients = int(groups.max()) + 1
    members = [np.flatnonzero(groups == g) for g in range(n_patients)]
    draws = np.random.default_rng(seed).multinomial(n_patients, np.full(n_patients, 1.0 / n_patients),
                                                    size=n_resamples)
    samples, names = [], None
    for counts in draws:
        idx = np.concatenate([np.repeat(members[g], c) for g, c in enumerate(counts) if c])
        row = mx.compute_metrics(y[idx], scores[idx], threshold) | mx.class_rates(y[idx], scores[idx], threshold)
        names = list(row)
        samples.append(list(row.values()))
    samples = np.array(samples)
    return {name: (float(np.nanquantile(samples[:, i], 0.025)), float(np.nanquantile(samples[:, i], 0.975)))
            for i, name in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=624)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    n_patients = args.images // 3
    label = rng.integers(0, 2, n_patients)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 3)[: args.images]
    y = np.repeat(label, 3)[: args.images]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    scores = np.stack([1 - p, p], axis=1)

    start = time.perf_counter()
    ours = mx.bootstrap_intervals(y, scores, 0.5, patients, args.resamples)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs = baseline_intervals(y, scores, 0.5, patients, args.resamples)
    t_base = time.perf_counter() - start
    worst = max(abs(ours[k][i] - theirs[k][i]) for k in theirs for i in (0, 1))
    print(f"{args.images} images, {n_patients} patients, {args.resamples} resamples, {len(theirs)} metrics and "
          "class rates")
    print(f"weighted bootstrap (radflow): {t_ours:.2f} s")
    print(f"copy-per-resample baseline:   {t_base:.2f} s")
    print(f"speed-up: {t_base / t_ours:.2f}x; largest interval difference: {worst:.2e}")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
