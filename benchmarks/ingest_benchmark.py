"""Ingest throughput against a single-process PIL loop and the raw decode cost, measured in one run.

Writes N synthetic 1024x1024 grayscale inputs (half JPEG, half PNG) in class-per-folder layout, then
times, on the same files:

1. raw decode: `tf.io.decode_image` of every file in one process (what ingest decodes with);
2. baseline: a plain single-process PIL loop: decode, pad to square, resize, write a TFRecord;
3. ingest: `radflow ingest` end to end (listing, Beam DirectRunner on all cores, manifest,
   metadata), so worker start-up is included.

Targets (issue 3): ingest >= 1.8x the baseline's images/s on 2 cores, and ingest's wall time per
image within 2x the raw decode time per image.

    .venv/bin/python benchmarks/ingest_benchmark.py            # N=1000
    .venv/bin/python benchmarks/ingest_benchmark.py --n 200    # quicker
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import ingest

SIDE = 1024


def write_inputs(root: str, n: int, seed: int = 0) -> list[str]:
    """n synthetic radiograph-like images (smooth anatomy-ish shapes plus noise), half JPEG, half PNG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    base = 90 + 80 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.05) + 80 * np.exp(
        -((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.05)
    paths = []
    for i in range(n):
        label = "NORMAL" if i % 4 == 0 else "PNEUMONIA"
        pixels = np.clip(base + rng.normal(0, 12, base.shape) + 30 * rng.random(), 0, 255).astype(np.uint8)
        fmt, ext = ("JPEG", "jpeg") if i % 2 == 0 else ("PNG", "png")
        path = os.path.join(root, label, f"person{i}_virus_0.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        paths.append(path)
    return paths


def raw_decode_seconds(paths: list[str]) -> float:
    """Seconds to read and `tf.io.decode_image` every file, one process."""
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            tf.io.decode_image(f.read(), channels=1, expand_animations=False)
    return time.perf_counter() - started


def pil_loop_seconds(paths: list[str], out: str, size: int) -> float:
    """Seconds for the plain single-process loop: PIL decode, pad to square, resize, write a TFRecord."""
    started = time.perf_counter()
    with tf.io.TFRecordWriter(out) as writer:
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                im = im.convert("L")
                side = max(im.size)
                square = Image.new("L", (side, side))
                square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
                small = square.resize((size, size), Image.Resampling.BILINEAR)
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[small.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of input images (default 1000)")
    parser.add_argument("--size", type=int, default=224, help="stored image size (default 224)")
    parser.add_argument("--workers", type=int, default=0, help="DirectRunner workers; 0 = all cores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        t0 = time.perf_counter()
        paths = write_inputs(src, args.n)
        print(f"wrote {args.n} inputs ({SIDE}x{SIDE}, half JPEG, half PNG) in {time.perf_counter() - t0:.1f} s; "
              f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        raw_decode_seconds(paths[:10])  # warm TensorFlow up
        decode = raw_decode_seconds(paths)
        baseline = pil_loop_seconds(paths, os.path.join(tmp, "baseline.tfrecord"), args.size)
        t0 = time.perf_counter()
        result = ingest(src, os.path.join(tmp, "out"), IngestConfig(
            image_size=args.size, patient_key_secret="benchmark", direct_num_workers=args.workers,
            progress_every=10**9))
        ingest_s = time.perf_counter() - t0
        assert result.states.get("ingested") == args.n, result.states

    n = args.n
    print(f"raw decode (tf.io.decode_image, 1 process): {1000 * decode / n:7.2f} ms/image")
    print(f"baseline PIL loop (1 process):              {1000 * baseline / n:7.2f} ms/image  {n / baseline:7.1f} img/s")
    print(f"radflow ingest (Beam, all cores, end to end): {1000 * ingest_s / n:5.2f} ms/image  "
          f"{n / ingest_s:7.1f} img/s")
    print(f"speed-up over the PIL loop: {baseline / ingest_s:.2f}x (target >= 1.8x)")
    print(f"ingest wall time per image / raw decode per image: {ingest_s / decode:.2f}x (target <= 2x)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
