"""Deterministic synthetic chest X-rays in the layout of Kaggle's "chest-xray-pneumonia" set.

The real data set cannot ship with the repository, yet the pipeline (ingest, validation, patient-level
splitting, class balancing, training, gating) needs something realistic to chew on in `make run` and in
tests. This module writes a look-alike: the same folder layout and file-name conventions (so patient ids
can be parsed from names), a similar 1:3 NORMAL:PNEUMONIA mix, varied image sizes and a few undecodable
files that validation has to catch. The images are drawn so that a small CNN can learn the class from
local lung-field texture but no global pixel statistic gives it away.

Only numpy and PIL are used so that generating data never pays the TensorFlow import.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")

_NORMAL_SHARE = 0.25  # the real set is roughly 1 NORMAL : 3 PNEUMONIA in every split
_VAL_SHARE = 0.03  # Kaggle's val split is tiny (16 images); keep that awkwardness
_TEST_SHARE = 0.20
_CORRUPT_SHARE = 0.01
_MIN_PER_VAL_CLASS = 2
_MIN_N = 30  # below this some split/class folder would get fewer than two images
_MIN_CORRUPT = 2
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote.

    Attributes:
        out_dir: The dataset root that holds train/, val/ and test/.
        counts: split -> class -> number of decodable images written.
        corrupt: Paths, relative to `out_dir`, of the deliberately undecodable files.
        patients: Number of distinct patients across all splits (corrupt files included).
    """

    out_dir: str
    counts: dict[str, dict[str, int]]
    corrupt: list[str]
    patients: int


@dataclass(frozen=True)
class _Planned:
    """One file to write.

    `finding` is "none", "bacteria" or "virus"; `damage` is "" for a good image, else "truncated" or "text".
    """

    split: str
    label: str
    name: str
    patient: str
    finding: str
    damage: str = ""


class _Names:
    """Hands out Kaggle-style file names with patient and image numbers that never repeat.

    The counters only go up, so a patient can never show up in two splits: that is what lets the
    pipeline's patient-level split be tested against a known truth.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._person = 0
        self._image = 0
        self._normal = {"IM": 0, "NORMAL2-IM": 0}

    def _step(self) -> int:
        # Gaps in the numbering, as in the real set, so nothing may assume ids are dense.
        return int(self._rng.integers(1, 4))

    def patient(self, split: str, label: str, n_images: int, damage: str = "") -> list[_Planned]:
        """Plans `n_images` files of one new patient.

        Args:
            split: Split folder the whole patient goes to.
            label: NORMAL or PNEUMONIA.
            n_images: How many files this patient gets.
            damage: "" for decodable images, else the kind of corruption for every file.

        Returns:
            The planned files, in name order.
        """
        if label == "PNEUMONIA":
            self._person += self._step()
            finding = "bacteria" if self._rng.random() < 0.65 else "virus"
            patient = f"person{self._person}"
            names = []
            for _ in range(n_images):
                self._image += self._step()
                names.append(f"{patient}_{finding}_{self._image}.jpeg")
        else:
            prefix = "IM" if self._rng.random() < 0.7 else "NORMAL2-IM"
            self._normal[prefix] += self._step()
            patient = f"{prefix}-{self._normal[prefix]:04d}"
            finding = "none"
            names = [f"{patient}-{i:04d}.jpeg" for i in range(1, n_images + 1)]
        return [_Planned(split, label, name, patient, finding, damage) for name in names]


def _targets(n: int) -> tuple[dict[str, dict[str, int]], int]:
    """Splits `n` files into per-split, per-class image counts plus a number of corrupt files.

    Args:
        n: Total number of files to write.

    Returns:
        (split -> class -> decodable images, number of corrupt files).
    """
    if n < _MIN_N:
        raise ValueError(f"n={n} is too small to fill train/val/test for both classes; use n >= {_MIN_N}")
    n_corrupt = max(_MIN_CORRUPT, round(n * _CORRUPT_SHARE))
    n_ok = n - n_corrupt
    totals = {"NORMAL": round(n_ok * _NORMAL_SHARE)}
    totals["PNEUMONIA"] = n_ok - totals["NORMAL"]
    targets: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for label in CLASSES:
        share = _NORMAL_SHARE if label == "NORMAL" else 1.0 - _NORMAL_SHARE
        targets["val"][label] = max(_MIN_PER_VAL_CLASS, round(n * _VAL_SHARE * share))
        targets["test"][label] = max(1, round(n * _TEST_SHARE * share))
        targets["train"][label] = totals[label] - targets["val"][label] - targets["test"][label]
    return targets, n_corrupt


def _plan(n: int, rng: np.random.Generator) -> list[_Planned]:
    """Decides every file name, split, class and finding before any pixel is drawn.

    Args:
        n: Total number of files.
        rng: Source of randomness for the plan only, so image content cannot shift the names.

    Returns:
        All planned files, decodable ones first, then the corrupt ones (all in train).
    """
    targets, n_corrupt = _targets(n)
    names = _Names(rng)
    planned: list[_Planned] = []
    for split in SPLITS:
        for label in CLASSES:
            left = targets[split][label]
            while left:
                # As in Kaggle's set: a NORMAL patient has one image (now and then two), a PNEUMONIA
                # patient one to four, so a validation split of a given size holds more NORMAL patients.
                most = 5 if label == "PNEUMONIA" else (3 if rng.random() < 0.1 else 2)
                k = min(left, int(rng.integers(1, most)))
                planned.extend(names.patient(split, label, k))
                left -= k
    for i in range(n_corrupt):
        damage = ("truncated", "text")[i % 2]
        planned.extend(names.patient("train", CLASSES[(i // 2 + 1) % 2], 1, damage))
    return planned


def _soft_ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float, edge: float) -> np.ndarray:
    """A 0..1 ellipse mask with a sigmoid rim `edge` wide (in radii), so nothing has a hard outline."""
    d = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / edge, -30.0, 30.0)))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Unit-scale noise with about `cells` blobs across the image (a bicubic-upsampled random grid)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _gaussian(u: np.ndarray, v: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """An axis-aligned Gaussian bump of height 1: the soft, rim-less shape of an opacity."""
    return np.exp(-0.5 * (((u - cx) / sx) ** 2 + ((v - cy) / sy) ** 2))


def _opacities(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, lungs: list[tuple[float, ...]], finding: str
) -> np.ndarray:
    """Draws pneumonia as soft, patchy consolidation inside the lung fields.

    Bacterial pneumonia is drawn as a few large dense lobar patches in one lung, viral as many
    smaller faint patches in both, and a share of cases is subtle, so the class has to be learnt
    from texture and place rather than from "is there something bright".

    Args:
        rng: Image-level randomness.
        u: Horizontal body coordinate of every pixel (about -1..1).
        v: Vertical body coordinate of every pixel (about -1..1, down is positive).
        lungs: (cx, cy, rx, ry) of the two lung fields.
        finding: "bacteria" or "virus".

    Returns:
        Extra density per pixel (not yet limited to the lung fields).
    """
    severity = rng.uniform(0.5, 1.0) if rng.random() < 0.85 else rng.uniform(0.25, 0.5)
    if finding == "bacteria":
        sides = [int(rng.integers(2))] if rng.random() < 0.7 else [0, 1]
        n_blobs, sigma, amp = (2, 5), (0.08, 0.18), 0.34
    else:
        sides = [0, 1] if rng.random() < 0.8 else [int(rng.integers(2))]
        n_blobs, sigma, amp = (4, 9), (0.05, 0.10), 0.28
    out = np.zeros_like(u)
    for side in sides:
        cx, cy, rx, ry = lungs[side]
        for _ in range(int(rng.integers(*n_blobs))):
            # Lower lobes more often than apices, as in real community-acquired pneumonia.
            bx = cx + rx * rng.uniform(-0.6, 0.6)
            by = cy + ry * 0.75 * (2.0 * rng.beta(2.6, 1.4) - 1.0)
            s = rng.uniform(*sigma)
            out += (
                amp
                * severity
                * rng.uniform(0.6, 1.3)
                * _gaussian(u, v, bx, by, s * rng.uniform(0.7, 1.4), s * rng.uniform(0.7, 1.4))
            )
    return out


def _draw(rng: np.random.Generator, h: int, w: int, finding: str) -> np.ndarray:
    """Draws the smooth part of one frontal chest radiograph: anatomy, ribs and any opacities.

    Args:
        rng: Randomness for this image.
        h: Height of the drawing grid.
        w: Width of the drawing grid.
        finding: "none" for a NORMAL image, "bacteria" or "virus" for PNEUMONIA.

    Returns:
        Density in 0..1 (bright = dense) as an (h, w) float32 array, before exposure and noise.
    """
    f32 = np.float32
    # Patient pose: small rotation, shift and scale, applied to the coordinates instead of the pixels.
    angle = np.deg2rad(rng.uniform(-6.0, 6.0))
    dx, dy = rng.uniform(-0.06, 0.06, size=2)
    scale = rng.uniform(0.92, 1.08)
    x = np.linspace(-1.0, 1.0, w, dtype=f32)[None, :] - f32(dx)
    y = np.linspace(-1.0, 1.0, h, dtype=f32)[:, None] - f32(dy)
    c, s = f32(np.cos(angle) / scale), f32(np.sin(angle) / scale)
    u = x * c + y * s
    v = y * c - x * s

    def jitter() -> float:  # anatomy varies a little between patients
        return rng.uniform(0.92, 1.08)

    lungs = [(side * 0.37 * jitter(), -0.08 * jitter(), 0.25 * jitter(), 0.58 * jitter()) for side in (-1, 1)]
    body = _soft_ellipse(u, v, 0.0, 0.08, 0.88 * jitter(), 1.08 * jitter(), 0.05)
    heart = _soft_ellipse(u, v, 0.13 * jitter(), 0.36 * jitter(), 0.24 * jitter(), 0.2 * jitter(), 0.12)
    lung = np.maximum(*(_soft_ellipse(u, v, *lung_, 0.06) for lung_ in lungs)) * (1.0 - 0.85 * heart)
    spine = np.exp(-((u / (0.09 + 0.04 * (v + 1.0))) ** 4)) * body  # widens towards the mediastinum

    # Posterior ribs: arcs that fall away from the spine towards the sides, seven or so down each lung.
    period = rng.uniform(0.15, 0.19)
    t = v - 0.2 * np.abs(u) - 0.6 * u * u
    ribs = (0.5 + 0.5 * np.cos(f32(2.0 * np.pi / period) * t + f32(rng.uniform(0, 2 * np.pi)))) ** 4
    ribs *= 1.0 / (1.0 + np.exp(np.clip((v - 0.55) / 0.05, -30.0, 30.0)))  # none below the diaphragm

    img = 0.06 + 0.52 * body - 0.32 * lung + 0.22 * spine + 0.18 * heart * body
    img += rng.uniform(0.04, 0.08) * ribs * body * (0.4 + 0.6 * lung)
    img += 0.025 * _smooth_noise(rng, h, w, 32) * lung  # vascular markings in both classes

    if finding == "none":
        # A benign calcified granuloma in some, so "any bright spot in a lung" is not a perfect rule.
        if rng.random() < 0.3:
            cx, cy, rx, ry = lungs[int(rng.integers(2))]
            r = rng.uniform(0.015, 0.03)
            spot = _gaussian(u, v, cx + rx * rng.uniform(-0.6, 0.6), cy + ry * rng.uniform(-0.6, 0.6), r, r)
            img += rng.uniform(0.15, 0.35) * spot
    else:
        patchy = np.clip(0.55 + 0.45 * _smooth_noise(rng, h, w, 18), 0.0, 1.0)
        img += _opacities(rng, u, v, lungs, finding) * patchy * lung

    return np.clip(img, 0.0, 1.0)


def _render(rng: np.random.Generator, h: int, w: int, finding: str) -> np.ndarray:
    """Draws one frontal chest radiograph as it would come off a scanner.

    Everything anatomical is smooth, so it is drawn at half resolution and upsampled, which makes a
    384-pixel image cost a few milliseconds; only the noise is drawn at full resolution.

    Args:
        rng: Randomness for this image only, so images do not depend on each other's draw order.
        h: Height in pixels.
        w: Width in pixels.
        finding: "none" for a NORMAL image, "bacteria" or "virus" for PNEUMONIA.

    Returns:
        The image as an (h, w) uint8 array.
    """
    f32 = np.float32
    # Exposure and processing differ between machines; randomise them so the class is not in the histogram.
    half = _draw(rng, (h + 1) // 2, (w + 1) // 2, finding) ** f32(rng.uniform(0.9, 1.1))
    img = np.asarray(Image.fromarray(half).resize((w, h), Image.BICUBIC))
    img = img * f32(rng.uniform(0.88, 1.12) * 255.0) + f32(rng.uniform(-0.15, 0.15) * 255.0 + 0.5)
    img += rng.standard_normal((h, w), dtype=f32) * f32(rng.uniform(0.01, 0.03) * 255.0)
    pixels = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(pixels.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2))))


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Writes via a hidden temporary name and a rename, so no image name ever holds half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def synthesize(out_dir: str, n: int = 800, seed: int = 0, *, min_side: int = 192, max_side: int = 384) -> SynthSummary:
    """Writes a synthetic chest-X-ray data set in the Kaggle chest-xray-pneumonia layout.

    The same (n, seed, min_side, max_side) always gives byte-identical files, so test expectations and
    sample-run results are reproducible.

    Args:
        out_dir: Root folder; train/, val/ and test/ with NORMAL/ and PNEUMONIA/ are created in it.
        n: Total number of files, corrupt ones included (at least 30).
        seed: Seed for everything: names, splits and pixels.
        min_side: Smallest image width or height in pixels.
        max_side: Largest image width or height in pixels.

    Returns:
        What was written, per split and class.

    Raises:
        FileExistsError: If `out_dir`/train already holds files, to avoid mixing two data sets.
        ValueError: If `n` or the side limits cannot make a sensible data set.
    """
    if not 32 <= min_side <= max_side:
        raise ValueError(f"need 32 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    root = Path(out_dir)
    train = root / "train"
    if train.is_dir() and any(p.is_file() for p in train.rglob("*")):
        raise FileExistsError(
            f"{train} already contains files; synthesize into an empty folder so two data sets do not mix"
        )

    plan_seq, image_seq = np.random.SeedSequence(seed).spawn(2)
    planned = _plan(n, np.random.default_rng(plan_seq))
    for split in SPLITS:
        for label in CLASSES:
            (root / split / label).mkdir(parents=True, exist_ok=True)

    # ingest records the data as synthetic and the model card says so: radflow.examples.SYNTHETIC_MARKER,
    # named here without importing it, since synth never pays TensorFlow's import (a test checks they agree)
    _write(root / ".radflow-synthetic.json", b'{"modality": "chest X-ray"}\n')
    counts = {split: dict.fromkeys(CLASSES, 0) for split in SPLITS}
    corrupt: list[str] = []
    for item, item_seq in zip(planned, image_seq.spawn(len(planned)), strict=True):
        rng = np.random.default_rng(item_seq)
        rel = f"{item.split}/{item.label}/{item.name}"
        if item.damage == "text":
            data = b"<html><body>404 Not Found</body></html>\n"  # what a failed download often leaves
        else:
            h = int(rng.integers(min_side, max_side + 1))
            w = int(np.clip(round(h * rng.uniform(0.8, 1.25)), min_side, max_side))
            data = _jpeg(_render(rng, h, w, item.finding))
            if item.damage == "truncated":
                data = data[: len(data) // 2]  # valid header, missing half the scan data
        _write(root / rel, data)
        if item.damage:
            corrupt.append(rel)
        else:
            counts[item.split][item.label] += 1
    return SynthSummary(str(root), counts, corrupt, len({p.patient for p in planned}))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: `python -m radflow.synth OUT [--n N] [--seed S]`.

    Args:
        argv: Arguments without the program name; None means sys.argv.

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(description="Write a synthetic chest-X-ray data set (Kaggle layout).")
    parser.add_argument("out", metavar="OUT", help="output folder (must not already hold a train/ set)")
    parser.add_argument("--n", type=int, default=800, help="total number of files (default 800)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = synthesize(args.out, n=args.n, seed=args.seed)
    except (FileExistsError, ValueError) as err:
        log.error("%s", err)
        return 1
    per_split = ", ".join(f"{s} {c['NORMAL']}N/{c['PNEUMONIA']}P" for s, c in summary.counts.items())
    log.info(
        "wrote %s: %s, %d corrupt, %d patients",
        summary.out_dir,
        per_split,
        len(summary.corrupt),
        summary.patients,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
