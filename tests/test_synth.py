"""Tests for radflow.synth: layout, naming, determinism, corruption and a learnable class signal."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radflow import examples as ex
from radflow.synth import CLASSES, SPLITS, SynthSummary, main, synthesize

N = 60
NAME_PATTERNS = {
    "PNEUMONIA": re.compile(r"^(?P<patient>person\d+)_(?:bacteria|virus)_(?P<image>\d+)\.jpeg$"),
    "NORMAL": re.compile(r"^(?P<patient>(?:NORMAL2-)?IM-\d{4})-(?P<image>\d{4})\.jpeg$"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return synthesize(str(tmp_path_factory.mktemp("seed0") / "data"), n=N, seed=0)


@pytest.fixture(scope="module")
def signal_set(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    # More images than `dataset` so the class-signal checks are not at the mercy of 14 NORMAL images;
    # small sides keep it fast, and the drawing is resolution-independent.
    return synthesize(str(tmp_path_factory.mktemp("signal") / "data"), n=240, seed=7, min_side=64, max_side=96)


def _files(root: str) -> dict[str, bytes]:
    """The data set's files: every file but the hidden synthetic-data marker (never an input)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _good_images(summary: SynthSummary) -> list[tuple[str, np.ndarray]]:
    """(class, pixels) of every decodable image."""
    corrupt = set(summary.corrupt)
    out = []
    for rel in _files(summary.out_dir):
        if rel not in corrupt:
            with Image.open(Path(summary.out_dir) / rel) as im:
                out.append((rel.split("/")[1], np.asarray(im, dtype=np.float32)))
    return out


def _auc(pos: list[float], neg: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def _lung_minus_body(pixels: np.ndarray) -> float:
    """Mean brightness in the cores of the two lung fields minus the mean over the thorax.

    The cores are small enough to stay inside the lungs whatever the pose jitter, and subtracting the
    thorax mean cancels the random exposure, which is what a classifier has to learn to do.
    """
    h, w = pixels.shape
    y = np.linspace(-1, 1, h)[:, None]
    x = np.linspace(-1, 1, w)[None, :]
    lung = (((np.abs(x) - 0.37) / 0.17) ** 2 + ((y + 0.08) / 0.4) ** 2) <= 1
    body = ((x / 0.75) ** 2 + ((y - 0.08) / 0.9) ** 2) <= 1
    return float(pixels[lung].mean() - pixels[body].mean())


def test_same_seed_gives_identical_bytes(dataset: SynthSummary, tmp_path: Path) -> None:
    again = synthesize(str(tmp_path / "data"), n=N, seed=0)
    assert _files(again.out_dir) == _files(dataset.out_dir)
    assert (again.counts, again.corrupt, again.patients) == (
        dataset.counts,
        dataset.corrupt,
        dataset.patients,
    )


def test_different_seed_gives_different_images(dataset: SynthSummary, tmp_path: Path) -> None:
    other = synthesize(str(tmp_path / "data"), n=N, seed=1)

    def digests(summary: SynthSummary) -> set[str]:
        files = _files(summary.out_dir)
        return {hashlib.sha256(files[rel]).hexdigest() for rel in files if rel not in summary.corrupt}

    assert not digests(dataset) & digests(other)


def test_layout_and_file_names(dataset: SynthSummary) -> None:
    root = Path(dataset.out_dir)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(SPLITS)
    assert json.loads((root / ex.SYNTHETIC_MARKER).read_text()) == {"modality": "chest X-ray"}
    for split in SPLITS:
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for label in CLASSES:
            names = [p.name for p in (root / split / label).iterdir()]
            assert len(names) >= 2, f"{split}/{label} is (nearly) empty"
            bad = [name for name in names if not NAME_PATTERNS[label].match(name)]
            assert not bad, f"unexpected names in {split}/{label}: {bad}"
    assert abs(len(_files(dataset.out_dir)) - N) <= 3


def test_patients_stay_in_one_split_and_class(dataset: SynthSummary) -> None:
    homes: dict[str, set[tuple[str, str]]] = defaultdict(set)
    images: dict[str, int] = defaultdict(int)
    pneumonia_numbers = []
    for rel in _files(dataset.out_dir):
        split, label, name = rel.split("/")
        match = NAME_PATTERNS[label].match(name)
        assert match, rel
        homes[match["patient"]].add((split, label))
        images[match["patient"]] += 1
        if label == "PNEUMONIA":
            pneumonia_numbers.append(int(match["image"]))
    assert {p: h for p, h in homes.items() if len(h) > 1} == {}
    assert len(homes) == dataset.patients
    assert max(images.values()) <= 4
    assert max(images.values()) > 1, "patients should have several images"
    assert len(set(pneumonia_numbers)) == len(pneumonia_numbers), "image counter K must be unique"
    # NORMAL2 is its own namespace: the same number may be used under both prefixes without clashing.
    assert any(p.startswith("NORMAL2-IM-") for p in homes) and any(p.startswith("IM-") for p in homes)


def test_class_mix_and_split_sizes(dataset: SynthSummary) -> None:
    counts = dataset.counts
    total = sum(sum(c.values()) for c in counts.values())
    normal = sum(c["NORMAL"] for c in counts.values())
    assert 0.2 <= normal / total <= 0.3
    for split in ("train", "test"):
        assert 0.18 <= counts[split]["NORMAL"] / sum(counts[split].values()) <= 0.32, split
    assert min(counts["val"].values()) >= 2
    assert sum(counts["val"].values()) <= 0.1 * N
    assert 0.15 * N <= sum(counts["test"].values()) <= 0.25 * N


def test_summary_counts_match_disk(dataset: SynthSummary) -> None:
    corrupt = set(dataset.corrupt)
    on_disk = {split: dict.fromkeys(CLASSES, 0) for split in SPLITS}
    for rel in _files(dataset.out_dir):
        if rel not in corrupt:
            split, label, _ = rel.split("/")
            on_disk[split][label] += 1
    assert dataset.counts == on_disk
    assert corrupt <= set(_files(dataset.out_dir))


def test_corrupt_files_fail_and_the_rest_decode(dataset: SynthSummary) -> None:
    assert len(dataset.corrupt) >= 2
    assert all(rel.startswith("train/") for rel in dataset.corrupt)
    for rel in dataset.corrupt:
        with pytest.raises(OSError), Image.open(Path(dataset.out_dir) / rel) as im:
            im.load()
    good = 0
    for rel in set(_files(dataset.out_dir)) - set(dataset.corrupt):
        with Image.open(Path(dataset.out_dir) / rel) as im:
            im.load()
            assert (im.format, im.mode) == ("JPEG", "L"), rel
            w, h = im.size
        assert 192 <= w <= 384 and 192 <= h <= 384, (rel, im.size)
        assert 0.79 <= w / h <= 1.26, (rel, im.size)
        good += 1
    assert good == sum(sum(c.values()) for c in dataset.counts.values())


def test_pneumonia_lungs_are_brighter(signal_set: SynthSummary) -> None:
    feature = defaultdict(list)
    for label, pixels in _good_images(signal_set):
        feature[label].append(_lung_minus_body(pixels))
    assert np.mean(feature["PNEUMONIA"]) > np.mean(feature["NORMAL"])
    assert _auc(feature["PNEUMONIA"], feature["NORMAL"]) >= 0.8


def test_global_brightness_does_not_give_the_class_away(signal_set: SynthSummary) -> None:
    brightness = defaultdict(list)
    for label, pixels in _good_images(signal_set):
        brightness[label].append(float(pixels.mean()))
    assert _auc(brightness["PNEUMONIA"], brightness["NORMAL"]) <= 0.75


def test_refuses_to_write_into_an_existing_dataset(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()  # an empty train/ is not a data set yet
    synthesize(str(tmp_path), n=30, seed=0, min_side=32, max_side=48)
    before = _files(str(tmp_path))
    with pytest.raises(FileExistsError, match="already contains files"):
        synthesize(str(tmp_path), n=30, seed=1, min_side=32, max_side=48)
    assert _files(str(tmp_path)) == before


def test_rejects_impossible_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too small"):
        synthesize(str(tmp_path / "a"), n=10)
    with pytest.raises(ValueError, match="min_side"):
        synthesize(str(tmp_path / "b"), n=60, min_side=200, max_side=100)


def test_main_writes_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = str(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="radflow.synth"):
        assert main([out, "--n", "30", "--seed", "3"]) == 0
        assert "corrupt" in caplog.records[-1].getMessage()
        assert main([out, "--n", "30"]) == 1
    assert caplog.records[-1].levelno == logging.ERROR
