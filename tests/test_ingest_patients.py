"""ingest: where the patient is, and which folders are splits and which are classes; refusals before any work."""

import csv
import io
import logging
import os
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from radflow import examples as ex
from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import (
    FROM_MANIFEST,
    FROM_NONE,
    FROM_PATTERN,
    INGESTED,
    KAGGLE,
    ingest,
    list_sources,
    read_manifest,
)

FAST = ("--direct_running_mode=in_memory",)


def _png(rng, side=40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def covid_style(tmp_path) -> str:
    """40 patients, three images each, named covid_p0001_1.png: a naming no preset knows."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for p in range(40):
        label = ("NORMAL", "PNEUMONIA")[p % 2]
        for k in range(3):
            _write(f"{src}/{label}/covid_p{p:04d}_{k}.png", _png(rng))
    return str(src)


def test_unknown_names_stop_ingest_before_any_work_with_the_three_ways(covid_style, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        ingest(covid_style, str(out), IngestConfig(image_size=16, beam_args=FAST))
    message = str(err.value)
    assert "120 of 120 inputs (100%) have no patient id" in message
    assert "--patient-id-pattern" in message and "patient_id column" in message and "PatientID" in message
    assert "allow_image_level_splits" in message and "covid_p0000_0.png" in message
    assert not out.exists()  # nothing was started


def test_a_patient_pattern_keeps_every_patient_in_one_split(covid_style, tmp_path):
    out = str(tmp_path / "out")
    config = IngestConfig(image_size=16, beam_args=FAST, val_fraction=0.2, test_fraction=0.2,
                          patient_id_pattern=r"(?:^|/)covid_(p\d+)_", patient_key_secret="s")
    ingest(covid_style, out, config)
    splits = defaultdict(set)
    for r in read_manifest(out):
        assert r["state"] == INGESTED and r["patient_id_from"] == FROM_PATTERN
        splits[r["patient_key"]].add(r["split"])
    assert len(splits) == 40 and all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "val", "test"}
    metadata = ex.read_metadata(out)
    assert metadata.patient_ids == {FROM_PATTERN: 120} and not metadata.image_level_splits


def test_image_level_splits_when_allowed_are_recorded(covid_style, tmp_path, caplog):
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        ingest(covid_style, out, IngestConfig(image_size=16, beam_args=FAST, allow_image_level_splits=True))
    metadata = ex.read_metadata(out)
    assert metadata.image_level_splits and metadata.patient_ids == {FROM_NONE: 120}
    assert any("120 of 120 inputs have no patient id" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("preset, rel, expected", [
    ("nih_chestxray14", "images_001/images/00000001_000.png", "00000001"),
    ("nih_chestxray14", "images_012/images/00030805_012.png", "00030805"),
    ("chexpert", "train/patient00001/study1/view1_frontal.jpg", "patient00001"),
    ("chexpert", "valid/patient64541/study2/view2_lateral.jpg", "patient64541"),
    ("mimic_cxr", "files/p10/p10000032/s50414267/02aa804e-bde0.jpg", "p10000032"),
    ("kaggle_chest_xray", "chest_xray/train/PNEUMONIA/person1_virus_6.jpeg", "person1"),
])
def test_presets_find_the_patient_of_public_sets(preset, rel, expected):
    pattern = IngestConfig(patient_id_pattern=preset).patient_id_regex
    assert pattern.search(rel).group(1) == expected


@pytest.mark.parametrize("pattern, message", [
    (r"covid_p\d+", "has 0 groups"),
    (r"(covid)_(p\d+)", "has 2 groups"),
    (r"(unclosed", "is not a regex"),
])
def test_a_pattern_must_have_exactly_one_group(pattern, message):
    with pytest.raises(ValueError, match=message):
        IngestConfig(patient_id_pattern=pattern)


def test_manifest_patient_ids_come_before_the_pattern(tmp_path):
    rng = np.random.default_rng(1)
    rows = [("path", "label", "patient_id")]
    for i in range(6):
        _write(f"{tmp_path}/img/person{i}_virus_{i}.png", _png(rng))
        rows.append((f"img/person{i}_virus_{i}.png", "AB"[i % 2], f"mrn{i // 2}" if i < 4 else ""))
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    files = {os.path.basename(f.path): f for f in list_sources(str(tmp_path / "m.csv"), IngestConfig()).files}
    given, named = files["person0_virus_0.png"], files["person5_virus_5.png"]
    assert (given.patient_id, given.patient_from) == ("mrn0", FROM_MANIFEST)
    assert (named.patient_id, named.patient_from) == ("person5", FROM_PATTERN)


def test_brain_mri_training_testing_layout_is_four_classes_in_two_splits(tmp_path):
    rng = np.random.default_rng(2)
    classes = ("glioma", "meningioma", "notumor", "pituitary")
    for split in ("Training", "Testing"):
        for c in classes:
            for i in range(3):
                _write(f"{tmp_path}/{split}/{c}/Tr-{c[:2]}_{split}{i}.jpg", _png(rng))
    listing = list_sources(str(tmp_path), IngestConfig(allow_image_level_splits=True))
    assert listing.layout == KAGGLE and listing.labels == classes
    assert {f.split for f in listing.files} == {"train", "test"}


@pytest.mark.parametrize("tops", [("TRAIN", "Valid", "test"), ("training", "validation", "testing")])
def test_split_folder_names_are_case_insensitive(tmp_path, tops):
    rng = np.random.default_rng(3)
    for top in tops:
        for c in ("A", "B"):
            _write(f"{tmp_path}/{top}/{c}/x.png", _png(rng))
    listing = list_sources(str(tmp_path), IngestConfig())
    assert {f.split for f in listing.files} == {"train", "val", "test"} and listing.labels == ("A", "B")


def test_split_and_class_folders_side_by_side_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    for top in ("Training", "Testing", "glioma"):
        _write(f"{tmp_path}/{top}/x/a.png", _png(rng))
    with pytest.raises(ValueError, match=r"\['Testing', 'Training'\] are split names but \['glioma'\] are not"):
        list_sources(str(tmp_path), IngestConfig())


def test_a_class_named_like_a_split_is_refused(tmp_path):
    rng = np.random.default_rng(5)
    _write(f"{tmp_path}/train/test/a.png", _png(rng))
    _write(f"{tmp_path}/train/B/a.png", _png(rng))
    with pytest.raises(ValueError, match="train/test/ is a split folder inside a split folder"):
        list_sources(str(tmp_path), IngestConfig())
    with pytest.raises(ValueError, match="labels .* are split names"):
        IngestConfig(labels=("NORMAL", "Testing"))
    (tmp_path / "m.csv").write_text("path,label\ntrain/B/a.png,validation\n")
    with pytest.raises(ValueError, match="label 'validation' is a split name"):
        list_sources(str(tmp_path / "m.csv"), IngestConfig())


def test_one_class_is_refused_before_any_work(tmp_path):
    rng = np.random.default_rng(6)
    for i in range(5):
        _write(f"{tmp_path}/src/NORMAL/IM-000{i}-0001.png", _png(rng))
    with pytest.raises(ValueError, match=r"holds 1 class \(NORMAL: 5 files\).*at least two"):
        ingest(str(tmp_path / "src"), str(tmp_path / "out"), IngestConfig(beam_args=FAST))
    assert not (tmp_path / "out").exists()


def test_a_split_without_a_class_is_named(tmp_path, caplog):
    rng = np.random.default_rng(7)
    for k, c in enumerate(("COVID19", "NORMAL", "PNEUMONIA")):
        for i in range(4):
            _write(f"{tmp_path}/src/train/{c}/person{10 * k + i}_virus_1.png", _png(rng))
        if c != "COVID19":
            _write(f"{tmp_path}/src/test/{c}/person{100 + k}_virus_1.png", _png(rng))
    with caplog.at_level(logging.WARNING):
        ingest(str(tmp_path / "src"), str(tmp_path / "out"), IngestConfig(image_size=16, beam_args=FAST))
    assert any("split test has no COVID19 examples" in r.getMessage() for r in caplog.records)
