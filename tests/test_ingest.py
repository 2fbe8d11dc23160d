import csv
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from radflow import examples as ex
from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import (
    DUPLICATE,
    INGESTED,
    MANIFEST_COLUMNS,
    QUARANTINED,
    ingest,
    list_sources,
    patient_id,
    read_manifest,
    split_fraction,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person12_bacteria_3.jpeg", "person12"),
        ("person12_virus_40.jpeg", "person12"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0200-0001.jpeg", "NORMAL2-IM-0200"),
        ("scan_17.png", "scan_17"),  # no patient key: its own group
    ],
)
def test_patient_id_from_kaggle_names(name, expected):
    assert patient_id(f"/data/train/X/{name}") == expected


def test_split_fraction_is_stable_and_seeded():
    assert split_fraction("person1", 0) == split_fraction("person1", 0)
    assert split_fraction("person1", 0) != split_fraction("person1", 1)
    values = [split_fraction(f"person{i}", 0) for i in range(2000)]
    assert 0 <= min(values) and max(values) < 1
    assert abs(np.mean(values) - 0.5) < 0.03


def _write(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path)


def _kaggle_tree(root, rng):
    """6 NORMAL + 6 PNEUMONIA patients in train (2 images each), 2 + 2 in test, one bad file, one duplicate."""
    for split, offset, n in (("train", 0, 6), ("test", 100, 2)):
        for p in range(offset, offset + n):
            for k in range(2):
                _write(f"{root}/{split}/NORMAL/IM-{p:04d}-{k:04d}.jpeg", rng.integers(0, 255, (40, 30), np.uint8))
                _write(f"{root}/{split}/PNEUMONIA/person{p}_virus_{k}.jpeg", rng.integers(0, 255, (30, 40), np.uint8))
    with open(f"{root}/train/NORMAL/IM-0900-0001.jpeg", "w") as f:
        f.write("<html>not an image</html>")
    with open(f"{root}/train/PNEUMONIA/person0_virus_0.jpeg", "rb") as f, \
            open(f"{root}/train/PNEUMONIA/person0_virus_9.jpeg", "wb") as g:
        g.write(f.read())


def test_kaggle_layout_keeps_official_test_and_never_splits_a_patient(tmp_path):
    _kaggle_tree(str(tmp_path), np.random.default_rng(0))
    files, labels = list_sources(str(tmp_path), IngestConfig(val_fraction=0.5))
    assert labels == ("NORMAL", "PNEUMONIA")
    assert {f.split for f in files if "/test/" in f.path} == {"test"}
    splits_of = {}
    for f in files:
        splits_of.setdefault(f.patient_id, set()).add(f.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert {f.split for f in files if "/train/" in f.path} == {"train", "val"}


def test_class_per_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("glioma", "no_tumor", "meningioma"):
        for i in range(20):
            _write(f"{tmp_path}/{c}/img{i}.png", rng.integers(0, 255, (20, 20), np.uint8))
    files, labels = list_sources(str(tmp_path), IngestConfig(test_fraction=0.2, val_fraction=0.2))
    assert labels == ("glioma", "meningioma", "no_tumor")
    assert {f.split for f in files} == {"train", "val", "test"}


def test_ingest_accounts_for_every_input(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    _kaggle_tree(src, np.random.default_rng(0))
    result = ingest(src, out, IngestConfig(image_size=16, val_fraction=0.3))

    rows = read_manifest(out)
    n_inputs = sum(len(files) for _, _, files in os.walk(src))
    assert len(rows) == n_inputs == result.total == 34
    assert result.states == {INGESTED: 32, QUARANTINED: 1, DUPLICATE: 1}
    assert result.reasons == {"not an image": 1}
    with open(os.path.join(out, ex.MANIFEST_FILE)) as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS
    bad = next(r for r in rows if r["path"].endswith("IM-0900-0001.jpeg"))
    assert (bad["state"], bad["reason"]) == (QUARANTINED, "not an image")
    dup = next(r for r in rows if r["state"] == DUPLICATE)
    assert "person0_virus_0.jpeg" in dup["reason"] and dup["path"].endswith("person0_virus_9.jpeg")

    metadata = ex.read_metadata(out)
    assert metadata.label_names == ("NORMAL", "PNEUMONIA") and metadata.image_size == 16
    assert sum(metadata.split_size(s) for s in ex.SPLITS) == 32
    assert metadata.counts["test"] == {"NORMAL": 4, "PNEUMONIA": 4}
    # Shards hold exactly the counted examples, each a 16x16x1 image with its label.
    for split in ex.SPLITS:
        batch = ex.concat_batches(ex.iter_split(out, split, metadata))
        assert len(batch.get(ex.LABEL, [])) == metadata.split_size(split)
        if batch:
            assert batch[ex.IMAGE].shape[1:] == (16, 16, 1)
            names = [metadata.label_names[i] for i in batch[ex.LABEL]]
            assert names == [n.decode() for n in batch[ex.LABEL_NAME]]


def test_ingest_refuses_too_many_bad_files_and_publishes_no_metadata(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(f"{src}/A/a{i}.png", rng.integers(0, 255, (8, 8), np.uint8))
        (src / "B").mkdir(exist_ok=True)
        (src / "B" / f"b{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(RuntimeError, match="quarantined"):
        ingest(str(src), out, IngestConfig(image_size=8, max_quarantined_fraction=0.2))
    assert not os.path.exists(os.path.join(out, ex.METADATA_FILE))
    with pytest.raises(FileNotFoundError, match="not a complete examples directory"):
        ex.read_metadata(out)
    rows = read_manifest(out)  # the manifest still explains every file
    assert sum(r["state"] == QUARANTINED for r in rows) == 4 and len(rows) == 8


def test_ingest_names_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_ingest_refuses_to_overwrite_a_finished_output(examples_dir, synth_dir):
    with pytest.raises(FileExistsError):
        ingest(synth_dir, examples_dir)


def test_synth_set_ingests_with_its_corrupt_files_quarantined(examples_dir, synth_dir):
    rows = read_manifest(examples_dir)
    quarantined = {os.path.relpath(r["path"], synth_dir) for r in rows if r["state"] == QUARANTINED}
    on_disk = sum(len(files) for _, _, files in tf.io.gfile.walk(synth_dir))
    assert len(rows) == on_disk
    assert len(quarantined) == 2
