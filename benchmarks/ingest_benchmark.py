"""Ingest throughput against a single-process PIL loop, with the CPU of every step, measured in one run.

Two input sets, written here:

- mixed: N synthetic 1024x1024 grayscale images, half JPEG, half PNG, in class-per-folder layout
  (white noise on smooth shapes: 3.1 bits per pixel as JPEG, far noisier than a radiograph);
- radiographs: N_LARGE synthetic chest X-rays from `radflow.synth` at 2,000-2,600 px, JPEG only,
  in Kaggle's layout (about 1% of them deliberately undecodable, as in the sample).

On each set, in the same run: the raw decode (`tf.io.decode_image`, one process), the baseline (a
plain single-process PIL loop: decode, pad to square, resize, write a TFRecord) and `radflow ingest`
end to end (listing, Beam start-up, manifest, read-back, metadata). It prints both ratios, ingest's
images/s over the loop's (targets, issue 18: >= 1.8x on the mixed set, >= 3x on the radiographs, on
2 cores), and a table of core-milliseconds per image for each step of ingest, each timed alone over
the same files: listing, read, hash (file, pixels, example), decode, resize, statistics (histogram,
features, the admission header), serialize, write (Beam's TFRecord framing), read-back, and Beam
overhead: ingest's whole CPU time less all of those. Wall-clock ratios need the cores to themselves,
so it prints the load average with each set and also the ratio the CPU times imply (the loop's
core-ms over ingest's, times the cores: what the ratio would be with every core free and busy). It
also prints how far the scaled JPEG decode moves the stored pixels from a full decode's (max and
mean absolute difference on 0-255).

    .venv/bin/python benchmarks/ingest_benchmark.py                     # N=1000, N_LARGE=600
    .venv/bin/python benchmarks/ingest_benchmark.py --n 200 --n-large 60  # quicker
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from apache_beam.io.tfrecordio import _TFRecordUtil
from PIL import Image

from radflow import admission
from radflow import examples as ex
from radflow.components.ingest import ingest as ing
from radflow.components.ingest.config import IngestConfig
from radflow.preprocessing import decode_image, decode_scaled, standardize_source
from radflow.synth import synthesize

SIDE = 1024
STEPS = ("listing", "read", "hash", "decode", "resize", "statistics", "serialize", "write", "read-back")


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
    """Seconds to read and `tf.io.decode_image` every file, one process (undecodable files skipped)."""
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            try:
                tf.io.decode_image(f.read(), channels=1, expand_animations=False)
            except tf.errors.InvalidArgumentError:
                pass
    return time.perf_counter() - started


def pil_loop_seconds(paths: list[str], out: str, size: int) -> tuple[float, float, int]:
    """Seconds for the plain single-process loop: PIL decode, pad to square, resize, write a TFRecord.

    Returns:
        The seconds, the CPU seconds, and how many files it decoded (a plain loop skips the ones PIL
        cannot read).
    """
    started, cpu, done = time.perf_counter(), time.process_time(), 0
    with tf.io.TFRecordWriter(out) as writer:
        for i, path in enumerate(paths):
            try:
                with Image.open(path) as im:
                    im = im.convert("L")
                    side = max(im.size)
                    square = Image.new("L", (side, side))
                    square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
                    small = square.resize((size, size), Image.Resampling.BILINEAR)
            except OSError:
                continue
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[small.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            done += 1
    return time.perf_counter() - started, time.process_time() - cpu, done


@dataclass
class StepCosts:
    """Core-seconds of each step over a set, and the number of images they were spent on."""

    seconds: dict[str, float]
    images: int

    def per_image_ms(self, step: str) -> float:
        return 1000 * self.seconds.get(step, 0.0) / self.images


def step_costs(source: str, out_dir: str, config: IngestConfig) -> StepCosts:
    """Times each step of ingest alone, one at a time, over every file of `source` ingest ingested.

    The clock is the process's CPU time, which counts TensorFlow's pool threads too. Decode, resize
    and the histogram are one graph in ingest (`_decoder`), so they are timed as what each adds to
    it: the graph cut after the decode, after the resize, and whole.
    """
    spent = dict.fromkeys(STEPS, 0.0)
    clock = time.process_time

    def timed(step: str, fn, *args):
        started = clock()
        result = fn(*args)
        spent[step] += clock() - started
        return result

    size, channels, policy = config.image_size, config.channels, config.resize_policy
    spec = [tf.TensorSpec([], tf.string)]

    def cut(stage: int):
        def run(data):
            pixels, bits, height, width = decode_scaled(data, channels, size, policy)
            out = [pixels, bits, height, width]
            if stage >= 1:
                out.append(standardize_source(pixels, size, policy, (height, width)))
            if stage >= 2:
                out.append(ex.intensity_histogram(pixels))
            return out
        return tf.function(run, autograph=False, input_signature=spec)

    graphs = [cut(stage) for stage in range(3)]
    listing = timed("listing", ing.list_sources, source, config)
    rows = {r["path"]: r for r in ing.read_manifest(out_dir)}
    files = [f for f in listing.files if rows[f.path]["state"] != ing.QUARANTINED]
    for graph in graphs:  # traced before the clock runs
        graph(tf.constant(ing._read_bytes(files[0].path)))
    with tempfile.TemporaryFile() as sink:
        for source_file in files:
            data = timed("read", ing._read_bytes, source_file.path)
            timed("hash", lambda d: hashlib.sha256(d).hexdigest(), data)
            timed("statistics", admission.read_header, data)
            tensor = tf.constant(data)
            costs = []
            for graph in graphs:
                started = clock()
                out = [t.numpy() for t in graph(tensor)]
                costs.append(clock() - started)
            spent["decode"] += costs[0]
            spent["resize"] += costs[1] - costs[0]
            spent["statistics"] += costs[2] - costs[1]
            pixels, bits, height, width, stored, counts = out
            info = timed("statistics", ex.ImageFeatures.measure, pixels, "JPEG", int(bits), "", {}, counts)
            timed("hash", ing.pixel_checksum, pixels, (int(height), int(width)))
            example = timed("serialize", ex.make_example, stored, 0, "A", info)
            timed("hash", lambda e: hashlib.sha256(e).hexdigest(), example)
            timed("write", _TFRecordUtil.write_record, sink, example)
    timed("read-back", ing.verify_shards, out_dir, list(rows.values()))
    return StepCosts(spent, len(files))


def pixel_difference(paths: list[str], config: IngestConfig) -> tuple[float, float, int]:
    """How far the scaled JPEG decode moves the stored pixels from a full decode's (both then `standardize`).

    Returns:
        The largest absolute difference on 0-255 over all images, the mean absolute difference, and
        how many JPEGs were decoded at a reduced scale.
    """
    size, channels, policy = config.image_size, config.channels, config.resize_policy
    largest, means, scaled_count = 0, [], 0
    for path in paths:
        with open(path, "rb") as f:
            data = tf.constant(f.read())
        if not path.endswith((".jpeg", ".jpg")):
            continue
        try:
            scaled, _, height, width = decode_scaled(data, channels, size, policy)
        except tf.errors.InvalidArgumentError:
            continue
        stored = standardize_source(scaled, size, policy, (height, width)).numpy().astype(np.int16)
        full = standardize_source(decode_image(data, channels), size, policy).numpy().astype(np.int16)
        difference = np.abs(stored - full)
        largest, scaled_count = max(largest, int(difference.max())), scaled_count + (scaled.shape[0] < int(height))
        means.append(float(difference.mean()))
    return float(largest), float(np.mean(means)) if means else 0.0, scaled_count


def bits_per_pixel(paths: list[str]) -> float:
    """The JPEG files' size in bits over their pixels: what the entropy decoding, which no scale skips, reads."""
    size_bits, pixels = 0, 0
    for path in paths:
        if path.endswith((".jpeg", ".jpg")):
            try:
                with Image.open(path) as im:
                    pixels += im.width * im.height
                size_bits += 8 * os.path.getsize(path)
            except OSError:
                pass
    return size_bits / max(pixels, 1)


def half_manifest(source: str, out: str, config: IngestConfig) -> tuple[str, int]:
    """A CSV manifest of every other input of `source`, with its label and split.

    Ingest of it, against ingest of the whole set, splits ingest's CPU into a cost per run (Beam's
    start-up and stages, tracing the decode graph) and a cost per image, what a large set pays.

    Returns:
        The manifest's path and how many inputs it lists.
    """
    files = ing.list_sources(source, config).files[::2]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows((s.path, s.label, s.split) for s in files)
    return out, len(files)


def ingest_cpu_seconds(source: str, out: str, config: IngestConfig) -> tuple[float, float, ing.IngestResult]:
    """Wall and CPU seconds of one ingest, the decode graph traced afresh as a new process would."""
    ing._decoder.cache_clear()
    cpu, wall = time.process_time(), time.perf_counter()
    result = ing.ingest(source, out, config)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure_set(name: str, source: str, paths: list[str], tmp: str, config: IngestConfig) -> dict:
    """The raw decode, the PIL loop, ingest end to end (of the set and of half of it) and the
    per-step costs on one set."""
    print(f"\n[{name}] {len(paths)} files, JPEG at {bits_per_pixel(paths):.2f} bits per pixel; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    raw_decode_seconds(paths[:5])  # warm TensorFlow up
    decode = raw_decode_seconds(paths)
    loop, loop_cpu, loop_images = pil_loop_seconds(paths, os.path.join(tmp, f"{name}-baseline.tfrecord"),
                                                   config.image_size)
    out = os.path.join(tmp, f"{name}-out")
    ingest_s, ingest_cpu, result = ingest_cpu_seconds(source, out, config)
    images = result.states.get(ing.INGESTED, 0)
    manifest, _ = half_manifest(source, os.path.join(tmp, f"{name}-half.csv"), config)
    _, half_cpu, half = ingest_cpu_seconds(manifest, os.path.join(tmp, f"{name}-half-out"), config)
    per_image = (ingest_cpu - half_cpu) / (images - half.states.get(ing.INGESTED, 0))
    costs = step_costs(source, out, config)
    largest, mean, scaled = pixel_difference(paths, config)
    return {"name": name, "files": len(paths), "decode": decode, "loop": loop, "loop_cpu": loop_cpu,
            "loop_images": loop_images,
            "ingest": ingest_s, "ingest_cpu": ingest_cpu, "images": images, "costs": costs,
            "per_image": per_image, "per_run": ingest_cpu - per_image * images,
            "pixels": (largest, mean, scaled), "load": os.getloadavg()[0]}


def report(m: dict, target: float) -> None:
    """Prints one set's figures: throughput, the ratio against its target, the per-step table."""
    n, costs = m["images"], m["costs"]
    loop_rate, ingest_rate = m["loop_images"] / m["loop"], n / m["ingest"]
    print(f"\n[{m['name']}] load average after: {m['load']:.2f}")
    print(f"  raw decode (tf.io.decode_image, 1 process): {1000 * m['decode'] / m['files']:7.2f} ms/image")
    print(f"  PIL loop (1 process):                       {1000 * m['loop'] / m['loop_images']:7.2f} ms/image "
          f"{loop_rate:7.1f} img/s")
    print(f"  radflow ingest (end to end):                {1000 * m['ingest'] / n:7.2f} ms/image "
          f"{ingest_rate:7.1f} img/s  ({n} ingested)")
    cores = os.cpu_count() or 1
    by_cpu = cores * (m["loop_cpu"] / m["loop_images"]) / (m["ingest_cpu"] / n)
    at_scale = cores * (m["loop_cpu"] / m["loop_images"]) / m["per_image"]
    print(f"  RATIO ingest / PIL loop: {ingest_rate / loop_rate:.2f}x (target >= {target}x); "
          f"from the CPU times on {cores} free cores: {by_cpu:.2f}x, and {at_scale:.2f}x at ingest's cost per "
          "image alone (a large set)")
    print(f"  ingest's CPU: {m['per_run']:.2f} core-s per run + {1000 * m['per_image']:.2f} core-ms per image "
          "(this set against half of it)")
    print("  core-ms per image, each step timed alone:")
    total = 1000 * m["ingest_cpu"] / n
    known = 0.0
    for step in STEPS:
        known += costs.per_image_ms(step)
        print(f"    {step:12s} {costs.per_image_ms(step):7.2f}")
    print(f"    {'Beam overhead':12s} {total - known:7.2f}  (ingest's CPU less the steps above)")
    print(f"    {'total':12s} {total:7.2f}  ({m['ingest_cpu']:.1f} core-s in {m['ingest']:.1f} s: "
          f"{m['ingest_cpu'] / m['ingest']:.2f} cores busy)")
    print(f"    {'PIL loop':12s} {1000 * m['loop_cpu'] / m['loop_images']:7.2f}  (for comparison, one core)")
    largest, mean, scaled = m["pixels"]
    print(f"  scaled JPEG decode vs full decode, stored pixels: max {largest:.0f}, mean {mean:.2f} grey levels "
          f"(0-255), {scaled} JPEGs decoded at a reduced scale")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="images of the mixed 1024x1024 set (default 1000)")
    parser.add_argument("--n-large", type=int, default=600, help="files of the 2,000-2,600 px JPEG set (default 600)")
    parser.add_argument("--size", type=int, default=224, help="stored image size (default 224)")
    parser.add_argument("--data", default="", help="keep the generated inputs here and reuse them on the next run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = IngestConfig(image_size=args.size, patient_key_secret="benchmark", progress_every=10**9)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or tmp
        mixed, large = os.path.join(data, f"mixed-{args.n}"), os.path.join(data, f"radiographs-{args.n_large}")
        started = time.perf_counter()
        if not os.path.isdir(mixed):
            write_inputs(mixed, args.n)
        if not os.path.isdir(large):
            synthesize(large, args.n_large, min_side=2000, max_side=2600)
        print(f"inputs ready in {time.perf_counter() - started:.1f} s; cores: {os.cpu_count()}, "
              f"load average: {os.getloadavg()[0]:.2f}")
        results = [
            measure_set("mixed", mixed, sorted(glob.glob(f"{mixed}/*/*")), tmp, config),
            measure_set("radiographs", large, sorted(glob.glob(f"{large}/*/*/*")), tmp, config),
        ]
    report(results[0], 1.8)
    report(results[1], 3.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
