"""Cost of validate's profiling pass, against plain TFDV statistics run split by split.

validate reads all splits in a single Beam pipeline that computes TFDV statistics and counts
patients per class in the same pass. The baseline is what the walking skeleton did (and what
`tfdv.generate_statistics_from_tfrecord` does): one pipeline per split, statistics only, and no
patient counts. Both run on the same examples, written here as a Kaggle-shaped set (~1:3
NORMAL:PNEUMONIA, 80/10/10 splits, 3 images per patient) of `--images` examples; the statistics
must agree. It also times serving skew on a batch of encoded request images. Wall and process
CPU time are both printed: CPU time is the steadier figure when other work shares the cores.

    .venv/bin/python benchmarks/validate_benchmark.py [--images 3000] [--requests 256] [--repeats 3]

Target: the patient counts cost at most ~30% over the statistics-only baseline, with identical statistics.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_data_validation as tfdv
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from radflow import examples as ex
from radflow.components.validate import skew as sk
from radflow.components.validate import validate as v
from radflow.components.validate.config import ValidateConfig

SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def write_set(root: str, n: int, seed: int = 0) -> None:
    """n examples over the splits, with source features measured from 48-96 px noisy images."""
    rng = np.random.default_rng(seed)
    counts = {}
    for split, share in SHARES.items():
        os.makedirs(os.path.join(root, split))
        m = int(n * share)
        counts[split] = {"NORMAL": 0, "PNEUMONIA": 0}
        with tf.io.TFRecordWriter(os.path.join(root, split, f"{split}-00000-of-00001.tfrecord")) as w:
            for i in range(m):
                label = int(rng.random() < 0.74)
                name = ("NORMAL", "PNEUMONIA")[label]
                h, w_ = (int(x) for x in rng.integers(48, 96, 2))
                source = np.clip(rng.normal(rng.uniform(70, 170), 40, (h, w_, 1)), 0, 255).astype(np.uint8)
                info = ex.ImageFeatures.measure(source, "JPEG", patient_key=f"{split}-{i // 3}")
                w.write(ex.make_example(np.zeros((32, 32, 1), np.uint8), label, name, info))  # pixels not profiled
                counts[split][name] += 1
    ex.write_metadata(root, ex.DatasetMetadata(("NORMAL", "PNEUMONIA"), 32, 1, counts))


def summary(stats) -> list[float]:
    """Per feature, by name: count, mean, std, min, max (numeric) or unique values (categorical)."""
    out = []
    for f in sorted(stats.datasets[0].features, key=lambda f: f.path.step[0]):
        n = f.num_stats
        out += [n.common_stats.num_non_missing, n.mean, n.std_dev, n.min, n.max, f.string_stats.unique]
    return out


def per_split_baseline(examples: str, scratch: str) -> dict:
    """One tfdv.generate_statistics_from_tfrecord pipeline per split (the skeleton's way)."""
    options = tfdv.StatsOptions(feature_allowlist=list(v.PROFILED_FEATURES))
    return {s: tfdv.generate_statistics_from_tfrecord(ex.shard_pattern(examples, s), os.path.join(scratch, f"{s}.pb"),
                                                      options, PipelineOptions(["--runner=DirectRunner"]))
            for s in SHARES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="examples over all splits (default 3000)")
    parser.add_argument("--requests", type=int, default=256, help="serving-skew batch size (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path; the best counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        examples = os.path.join(tmp, "examples")
        write_set(examples, args.images)
        # Warm both paths once (imports, Beam start-up), then time each --repeats times, alternating
        # so that load from other processes hits both alike; the best time of each is reported.
        v._profile(examples, list(SHARES), os.path.join(tmp, "warm"), ValidateConfig())
        t_base, t_ours = [], []
        for i in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            baseline = per_split_baseline(examples, os.path.join(tmp, f"base{i}"))
            t_base.append((time.perf_counter() - t0, time.process_time() - c0))
            t0, c0 = time.perf_counter(), time.process_time()
            ours, patients = v._profile(examples, list(SHARES), os.path.join(tmp, f"ours{i}"), ValidateConfig())
            t_ours.append((time.perf_counter() - t0, time.process_time() - c0))
        wall_base, cpu_base = min(w for w, _ in t_base), min(c for _, c in t_base)
        wall_ours, cpu_ours = min(w for w, _ in t_ours), min(c for _, c in t_ours)
        same = all(ours[s].datasets[0].num_examples == baseline[s].datasets[0].num_examples
                   and np.allclose(*(summary(stats[s]) for stats in (ours, baseline)), rtol=1e-6) for s in SHARES)

        rng = np.random.default_rng(1)
        requests = []
        for _ in range(args.requests):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(buf, format="PNG")
            requests.append(buf.getvalue())
        t0 = time.perf_counter()
        report = sk.serving_skew(requests, ours["train"])
        t_skew = time.perf_counter() - t0

    print(f"examples: {args.images} over train/val/test; cores: {os.cpu_count()}; load avg: {os.getloadavg()[0]:.2f}; "
          f"best of {args.repeats}")
    print(f"per-split pipelines (baseline, statistics only): wall {wall_base:.2f} s, CPU {cpu_base:.2f} s")
    print(f"one pipeline, statistics + patients per class:   wall {wall_ours:.2f} s, CPU {cpu_ours:.2f} s  "
          f"(CPU ratio x{cpu_ours / cpu_base:.2f}, wall ratio x{wall_ours / wall_base:.2f})")
    print(f"statistics identical: {same}; patients in train: {sum(patients['train'].values())}")
    print(f"serving skew on {args.requests} PNG requests (256x256): {t_skew:.2f} s "
          f"({args.requests / t_skew:.0f} images/s), {len(report.exceeded)} features over a threshold")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
