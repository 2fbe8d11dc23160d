"""ingest: layouts, formats, splits, accounting and privacy, on small files written here."""

import csv
import io
import logging
import os
import re
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.uid import JPEG2000Lossless
from test_dicom import IDENTIFYING, make_dicom

from radflow import admission, dicom
from radflow import examples as ex
from radflow.components.ingest.config import IngestConfig
from radflow.components.ingest.ingest import (
    CLASS_PER_FOLDER,
    DUPLICATE,
    INGESTED,
    KAGGLE,
    MANIFEST,
    MANIFEST_COLUMNS,
    QUARANTINED,
    SourceFile,
    _num_shards,
    assign_split,
    class_share_gaps,
    decode_file,
    decode_threads,
    ingest,
    key_id,
    list_sources,
    patient_id,
    pipeline_options,
    read_manifest,
    resolve_patient_key_secret,
    split_fraction,
)
from radflow.preprocessing import decode_image, preprocess_encoded

# In-process Beam for the small runs below; the session fixture `examples_dir` runs the default
# multi-processing DirectRunner.
FAST = ("--direct_running_mode=in_memory",)
CORES = os.cpu_count() or 1
SECRET = "test-secret-not-for-production"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person12_bacteria_3.jpeg", "person12"),
        ("person12_virus_40.jpeg", "person12"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0200-0001.jpeg", "NORMAL2-IM-0200"),
        ("scan_17.png", ""),  # no patient in the name: the file becomes its own group
    ],
)
def test_patient_id_from_kaggle_names(name, expected):
    assert patient_id(f"train/X/{name}", IngestConfig().patient_id_regex) == expected


def test_split_fraction_is_stable_and_seeded():
    assert split_fraction("person1", 0) == split_fraction("person1", 0)
    assert split_fraction("person1", 0) != split_fraction("person1", 1)
    values = [split_fraction(f"person{i}", 0) for i in range(2000)]
    assert 0 <= min(values) and max(values) < 1
    assert abs(np.mean(values) - 0.5) < 0.03


def _patients(n, seed=7):
    """n patients with a ~1:3 class mix."""
    rng = np.random.default_rng(seed)
    return [(f"patient{i}", "NORMAL" if rng.random() < 0.25 else "PNEUMONIA") for i in range(n)]


def test_splits_are_stable_when_files_are_added():
    config = IngestConfig(val_fraction=0.1, test_fraction=0.15)
    before = {p: assign_split(p, {""}, config) for p, _ in _patients(3000)}
    after = {p: assign_split(p, {""}, config) for p, _ in _patients(4500)}  # 1500 patients more
    assert all(after[p] == s for p, s in before.items())


def test_split_fractions_and_class_shares_stay_within_a_few_points():
    config = IngestConfig(val_fraction=0.1, test_fraction=0.15)
    counts = {s: {"NORMAL": 0, "PNEUMONIA": 0} for s in ex.SPLITS}
    for p, label in _patients(4000):
        counts[assign_split(p, {""}, config)][label] += 1
    sizes = {s: sum(c.values()) / 4000 for s, c in counts.items()}
    assert abs(sizes["test"] - 0.15) < 0.02 and abs(sizes["val"] - 0.085) < 0.02  # val: 10% of non-test
    assert max(class_share_gaps(counts).values()) < 0.03


def test_class_share_gap_by_hand():
    counts = {"train": {"A": 30, "B": 70}, "val": {"A": 10, "B": 10}, "test": {"A": 0, "B": 0}}
    gaps = class_share_gaps(counts)  # whole set: A = 40/120 = 1/3
    assert gaps["train"] == pytest.approx(1 / 30) and gaps["val"] == pytest.approx(0.5 - 1 / 3)
    assert "test" not in gaps


@pytest.mark.parametrize(
    "mode, official, expected",
    [
        ("merge_val", {"test", "train"}, "test"),  # any official test image makes a test patient
        ("merge_val", {"val"}, {"train", "val"}),  # official val joins the carve-out pool
        ("keep", {"val", "train"}, "val"),
        ("keep", {"train"}, "train"),
    ],
)
def test_official_splits_modes(mode, official, expected):
    config = IngestConfig(official_splits=mode, val_fraction=0.5)
    got = {assign_split(f"p{i}", official, config) for i in range(50)}
    assert got == ({expected} if isinstance(expected, str) else expected)


def test_resplit_ignores_official_splits():
    config = IngestConfig(official_splits="resplit", test_fraction=0.3, val_fraction=0.3)
    assert {assign_split(f"p{i}", {"test"}, config) for i in range(200)} == {"train", "val", "test"}


def _served(data: bytes, size: int, channels: int = 1, policy: str = "pad") -> np.ndarray:
    """What the serving signature's preprocessing makes of `data`, back on ingest's uint8 scale."""
    return np.round(preprocess_encoded(tf.constant(data), size, channels, policy).numpy() * 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _image(rng, h=40, w=48):
    return rng.integers(0, 255, (h, w), np.uint8)


def _kaggle_tree(root: str) -> dict[str, str]:
    """A Kaggle-layout tree with every format and every bad-file reason; returns path -> expected outcome.

    A parent folder named after a person stands in for paths that carry names.
    """
    rng = np.random.default_rng(0)
    expect = {}

    def put(rel, data, outcome):
        _write(f"{root}/{rel}", data)
        expect[f"{root}/{rel}"] = outcome

    for p in range(6):  # train: 6 NORMAL + 6 PNEUMONIA patients, 2 images each
        for k in range(2):
            put(f"train/NORMAL/IM-{p:04d}-{k:04d}.jpeg", _jpeg(_image(rng)), INGESTED)
            put(f"train/PNEUMONIA/person{p}_virus_{k}.png", _png(_image(rng)), INGESTED)
    for p in range(100, 103):
        put(f"test/NORMAL/IM-{p:04d}-0001.jpeg", _jpeg(_image(rng)), INGESTED)
        put(f"test/PNEUMONIA/person{p}_bacteria_1.jpeg", _jpeg(_image(rng)), INGESTED)
    put("val/NORMAL/IM-0500-0001.jpeg", _jpeg(_image(rng)), INGESTED)
    # 16-bit PNG; DICOM: 12-bit MONOCHROME2, MONOCHROME1, JPEG 2000 lossless; identifying headers.
    put("train/PNEUMONIA/person20_virus_1.png", _png(_image(rng).astype(np.uint16) * 257), INGESTED)
    ramp = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    put("train/NORMAL/Jane_Doe_study/a.dcm", make_dicom(ramp, PatientID="PID-A"), INGESTED)
    put("train/NORMAL/Jane_Doe_study/b.dcm", make_dicom(4095 - ramp, "MONOCHROME1", PatientID="PID-A",
                                                         WindowCenter=1500, WindowWidth=2000), INGESTED)
    put("test/PNEUMONIA/c.dcm", make_dicom(ramp[::-1].copy(), transfer_syntax=JPEG2000Lossless, PatientID="PID-C"),
        INGESTED)
    # Bad files, one per reason.
    good = _jpeg(_image(rng))
    put("train/NORMAL/IM-0900-0001.jpeg", b"<html>not an image</html>", "not an image")
    put("train/NORMAL/IM-0901-0001.jpeg", good[: len(good) // 2], "truncated")
    put("train/NORMAL/IM-0902-0001.tiff", _tiff(_image(rng)), "unsupported format")
    put("train/NORMAL/IM-0903-0001.jpeg", _jpeg(_image(rng, 12, 40)), "too small")
    put("train/NORMAL/IM-0905-0001.png", _png(np.full((40, 48), 9, np.uint8)), "constant")
    put("train/NORMAL/multi.dcm", make_dicom(np.zeros((2, 16, 16), np.uint16)), "multi-frame")
    put("train/COVID19/IM-0904-0001.jpeg", _jpeg(_image(rng)), "unknown class")
    # Duplicates: one within a patient, and one train image copied under test as another patient: the
    # first copy by path (test/ sorts before train/) is kept, the train one is a cross-split duplicate.
    with open(f"{root}/train/PNEUMONIA/person1_virus_0.png", "rb") as f:
        put("train/PNEUMONIA/person1_virus_9.png", f.read(), DUPLICATE)
    with open(f"{root}/train/PNEUMONIA/person0_virus_0.png", "rb") as f:
        put("test/PNEUMONIA/person50_virus_1.png", f.read(), INGESTED)
    expect[f"{root}/train/PNEUMONIA/person0_virus_0.png"] = DUPLICATE
    return expect


def _tiff(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="TIFF")
    return buf.getvalue()


@pytest.fixture(scope="module")
def kaggle_run(tmp_path_factory):
    """One ingest of the mixed Kaggle tree, with labels fixed by config (COVID19 is not among them)."""
    root = tmp_path_factory.mktemp("kaggle")
    src, out = str(root / "chest_xray"), str(root / "out")
    expect = _kaggle_tree(src)
    config = IngestConfig(image_size=16, min_side=16, val_fraction=0.3, labels=("NORMAL", "PNEUMONIA"),
                          max_quarantined_fraction=0.3, patient_key_secret=SECRET, beam_args=FAST)
    return src, out, expect, ingest(src, out, config)


def test_every_input_ends_in_exactly_one_state(kaggle_run):
    src, out, expect, result = kaggle_run
    rows = read_manifest(out)
    n_inputs = sum(len(files) for _, _, files in os.walk(src))
    assert len(rows) == n_inputs == len(expect) == result.total
    assert sorted(r["path"] for r in rows) == sorted(expect)  # each input once
    for r in rows:
        outcome = expect[r["path"]]
        if outcome in (INGESTED, DUPLICATE):
            assert r["state"] == outcome, r
        else:
            assert r["state"] == QUARANTINED and r["reason"].split(":")[0].startswith(outcome), r
    assert result.states == {INGESTED: 35, QUARANTINED: 7, DUPLICATE: 2}
    assert result.reasons == {"not an image": 1, "truncated": 1, "unsupported format": 1, "too small": 1,
                              "constant": 1, "multi-frame": 1, "unknown class 'COVID19'": 1}
    with open(os.path.join(out, ex.MANIFEST_FILE)) as f:
        assert tuple(next(csv.reader(f))) == MANIFEST_COLUMNS
    metadata = ex.read_metadata(out)
    assert sum(metadata.split_size(s) for s in ex.SPLITS) == result.states[INGESTED]
    assert metadata.states == result.states and metadata.layout == KAGGLE
    assert metadata.resize_policy == "pad" and len(metadata.input_fingerprint) == 64


def test_duplicates_are_ingested_once_and_cross_split_ones_reported(kaggle_run):
    _, out, _, _ = kaggle_run
    dups = {os.path.basename(r["path"]): r["reason"] for r in read_manifest(out) if r["state"] == DUPLICATE}
    assert set(dups) == {"person1_virus_9.png", "person0_virus_0.png"}
    assert "person1_virus_0.png" in dups["person1_virus_9.png"] and "cross-split" not in dups["person1_virus_9.png"]
    assert "person50_virus_1.png" in dups["person0_virus_0.png"]
    assert "cross-split: kept in test, would be in " in dups["person0_virus_0.png"]


def test_kaggle_splits_keep_official_test_and_never_split_a_patient(kaggle_run):
    src, out, _, _ = kaggle_run
    rows = [r for r in read_manifest(out) if r["state"] == INGESTED]
    assert {r["split"] for r in rows if "/test/" in r["path"]} == {"test"}
    assert {r["split"] for r in rows if "/train/" in r["path"] or "/val/" in r["path"]} == {"train", "val"}
    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["patient_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    dicom_keys = {r["patient_key"] for r in rows if "Jane_Doe_study" in r["path"]}
    assert len(dicom_keys) == 1  # both DICOM files of PatientID PID-A group together
    assert dicom_keys == {_key("PID-A")}


def _key(patient):
    from radflow.components.ingest.ingest import patient_key

    return patient_key(patient, SECRET)


def _all_examples(out):
    metadata = ex.read_metadata(out)
    records = [r for s in ex.SPLITS for f in ex.split_files(out, s) for r in tf.data.TFRecordDataset(f)]
    return metadata, [tf.train.Example.FromString(r.numpy()) for r in records], b"".join(
        open(f, "rb").read() for s in ex.SPLITS for f in ex.split_files(out, s))


def test_privacy_only_allow_listed_headers_and_no_paths_reach_the_examples(kaggle_run):
    src, out, expect, _ = kaggle_run
    metadata, examples, raw = _all_examples(out)
    allowed_keys = set(ex.SCALAR_FEATURES) | set(ex.HEADER_FEATURES.values()) | {ex.IMAGE}
    for e in examples:
        assert set(e.features.feature) <= allowed_keys
    for secret_value in [*IDENTIFYING.values(), "PID-A", "PID-C", "Jane_Doe", SECRET]:
        assert secret_value.encode() not in raw, secret_value
    for path in expect:
        assert os.path.basename(path).encode() not in raw and os.path.relpath(path, src).encode() not in raw
    assert b"person" not in raw and b"IM-0" not in raw and src.encode() not in raw
    assert SECRET not in open(os.path.join(out, ex.METADATA_FILE)).read()
    assert metadata.patient_key_id == key_id(SECRET)
    views = [e.features.feature[ex.DICOM_VIEW_POSITION].bytes_list.value[0] for e in examples]
    assert views.count(b"PA") == 3 and views.count(b"") == len(examples) - 3


def _by_format(examples):
    out = {}
    for e in examples:
        f = e.features.feature
        out.setdefault(f[ex.SOURCE_FORMAT].bytes_list.value[0].decode(), []).append(f)
    return out


def test_each_format_is_ingested_with_its_bit_depth(kaggle_run):
    _, examples, _ = _all_examples(kaggle_run[1])
    formats = _by_format(examples)
    assert {k: len(v) for k, v in formats.items()} == {"JPEG": 19, "PNG": 13, "DICOM": 3}
    png_depths = sorted(f[ex.BIT_DEPTH].int64_list.value[0] for f in formats["PNG"])
    assert png_depths == [8] * 12 + [16]
    assert {f[ex.BIT_DEPTH].int64_list.value[0] for f in formats["DICOM"]} == {12}
    for f in formats["DICOM"]:
        assert 0 <= f[ex.P05_INTENSITY].float_list.value[0] <= f[ex.P95_INTENSITY].float_list.value[0] <= 255
        assert f[ex.DICOM_MODALITY].bytes_list.value[0] == b"CR"


def test_dicom_ingest_equals_the_png_the_client_sends(tmp_path):
    """Training == serving for DICOM: ingest's pixels equal the serving preprocessing of to_png(dicom)."""
    ramp = (np.arange(64 * 48, dtype=np.uint16) % 4096).reshape(64, 48)
    data = make_dicom(ramp, "MONOCHROME1", WindowCenter=2000, WindowWidth=3000)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    decoded = decode_file(SourceFile(str(path), "A"), ("A",), 32, 1, SECRET)
    assert not decoded.reason
    stored = tf.train.Example.FromString(decoded.example).features.feature[ex.IMAGE].bytes_list.value[0]
    assert stored == _served(dicom.to_png(data), 32).tobytes()


def test_sixteen_bit_png_reaches_uint8_as_the_server_decodes_it(tmp_path):
    pixels = np.array([[0, 255, 256, 40000, 65535]], np.uint16).repeat(5, axis=0)
    path = tmp_path / "x.png"
    path.write_bytes(_png(pixels))
    decoded = decode_file(SourceFile(str(path), "A"), ("A",), 5, 1)
    f = tf.train.Example.FromString(decoded.example).features.feature
    served = _served(path.read_bytes(), 5)
    assert f[ex.IMAGE].bytes_list.value[0] == served.tobytes()
    assert list(served[0, :, 0]) == [0, 1, 1, 156, 255]  # round(v * 255 / 65535): 40000 -> 155.65
    assert f[ex.BIT_DEPTH].int64_list.value[0] == 16
    assert f[ex.P95_INTENSITY].float_list.value[0] == pytest.approx(255)


def _with_sbit(png: bytes, bits: int) -> bytes:
    """The PNG with an sBIT chunk of `bits` inserted before its first IDAT."""
    import struct
    import zlib

    chunk = b"sBIT" + bytes([bits])
    i = png.index(b"IDAT") - 4
    return png[:i] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[i:]


@pytest.mark.parametrize("case, values, sbit, depth, expected", [
    # 12-bit values left in the low bits of a 16-bit PNG: read at 12 bits, from their range or from sBIT
    ("12-bit values", [0, 1, 2048, 4095], None, 12, [0, 0, 128, 255]),
    ("12-bit values, sBIT 12", [0, 1, 2048, 4095], 12, 12, [0, 0, 128, 255]),
    ("10-bit values", [0, 512, 1023, 100], None, 10, [0, 128, 255, 25]),
    # a writer that followed the spec scaled 12-bit values up to 16 bits and said so with sBIT
    ("scaled to 16 bits, sBIT 12", [0, 16, 32768, 65520], 12, 16, [0, 0, 128, 255]),
])
def test_wide_png_is_read_at_its_real_bit_depth_on_both_paths(tmp_path, case, values, sbit, depth, expected):
    pixels = np.array([values], np.uint16).repeat(4, axis=0)
    data = _png(pixels) if sbit is None else _with_sbit(_png(pixels), sbit)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    decoded = decode_file(SourceFile(str(path), "A"), ("A",), 4, 1)
    f = tf.train.Example.FromString(decoded.example).features.feature
    served = _served(data, 4)
    assert f[ex.IMAGE].bytes_list.value[0] == served.tobytes()
    assert list(served[0, :, 0]) == expected
    assert f[ex.BIT_DEPTH].int64_list.value[0] == depth


def test_cmyk_jpeg_is_decoded_on_both_paths(tmp_path):
    rng = np.random.default_rng(4)
    grey = np.clip(rng.normal(120, 30, (48, 64)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).convert("RGB").convert("CMYK").save(buf, format="JPEG", quality=95)
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(buf.getvalue())
    assert Image.open(path).mode == "CMYK"
    decoded = decode_file(SourceFile(str(path), "A"), ("A",), 32, 1)
    assert not decoded.reason
    stored = tf.train.Example.FromString(decoded.example).features.feature[ex.IMAGE].bytes_list.value[0]
    assert stored == _served(buf.getvalue(), 32).tobytes()  # decoded at 1/2 on both paths (ceil(64 / 2) = 32)
    pixels = decode_image(tf.constant(buf.getvalue()), 1).numpy()[..., 0]
    assert np.abs(pixels.astype(float) - grey).mean() < 4  # the picture, not inverted or garbage
    rgb = decode_image(tf.constant(buf.getvalue()), 3).numpy()
    assert rgb.shape == (48, 64, 3)


def test_centre_crop_policy_and_three_channels(tmp_path):
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 10:30] = 200  # the centre square is all 200; the sides are black
    path = tmp_path / "x.png"
    path.write_bytes(_png(pixels))
    cropped = decode_file(SourceFile(str(path), "A"), ("A",), 10, 3, resize_policy="crop")
    padded = decode_file(SourceFile(str(path), "A"), ("A",), 10, 3, resize_policy="pad")
    image = lambda d: np.frombuffer(  # noqa: E731
        tf.train.Example.FromString(d.example).features.feature[ex.IMAGE].bytes_list.value[0], np.uint8)
    assert image(cropped).size == 10 * 10 * 3 and set(image(cropped)) == {200}
    assert 0 in set(image(padded))


def test_image_features_histogram_path_matches_numpy():
    pixels = np.random.default_rng(3).integers(0, 256, (37, 23, 1), np.uint8)
    info = ex.ImageFeatures.measure(pixels, "PNG")
    flat = pixels.astype(np.float64).ravel()
    assert [info.p05, info.p50, info.p95] == pytest.approx(list(np.percentile(flat, [5, 50, 95])))
    assert info.mean == pytest.approx(flat.mean()) and info.std == pytest.approx(flat.std())
    assert info.near_black == pytest.approx((flat <= ex.NEAR_BLACK).mean())
    assert info.near_white == pytest.approx((flat >= ex.NEAR_WHITE).mean())


def test_class_per_folder_multi_class_layout(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("glioma", "no_tumor", "meningioma"):
        for i in range(20):
            _write(f"{tmp_path}/{c}/img{i}.png", _png(_image(rng, 20, 20)))
    _write(f"{tmp_path}/loose.png", _png(_image(rng, 20, 20)))  # no class folder
    listing = list_sources(str(tmp_path), IngestConfig())
    assert listing.layout == CLASS_PER_FOLDER
    assert listing.labels == ("glioma", "meningioma", "no_tumor")
    assert {f.split for f in listing.files} == {""}  # no official splits: all by patient hash
    assert next(f for f in listing.files if f.path.endswith("loose.png")).label == ""


def test_manifest_source_with_patients_and_splits(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="radflow.components.ingest.ingest")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        label = "tumour" if i % 2 else "no_tumour"
        _write(f"{tmp_path}/images/{i}.png", _png(_image(rng, 32, 32)))
        rows.append((f"images/{i}.png", label, f"pat{i // 2}", "test" if i < 4 else ""))
    rows.append(("images/missing.png", "tumour", "pat99", ""))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "patient_id", "split"), *rows])
    out = str(tmp_path / "out")
    result = ingest(str(tmp_path / "labels.csv"), out,
                    IngestConfig(image_size=16, min_side=16, labels=("no_tumour", "tumour"), val_fraction=0.3,
                                 max_quarantined_fraction=0.1, patient_key_secret=SECRET, beam_args=FAST,
                                 progress_every=5))
    assert result.metadata.layout == MANIFEST and result.metadata.label_names == ("no_tumour", "tumour")
    assert result.states == {INGESTED: 12, QUARANTINED: 1}
    manifest = {os.path.basename(r["path"]): r for r in read_manifest(out)}
    assert manifest["missing.png"]["reason"].startswith("unreadable")
    assert {manifest[f"{i}.png"]["split"] for i in range(4)} == {"test"}
    assert all(manifest[f"{i}.png"]["patient_key"] == _key(f"pat{i // 2}") for i in range(12))
    progress = [r.getMessage() for r in caplog.records if "ingest progress" in r.getMessage()]
    counts = [int(re.search(r"has read (\d+) files", line).group(1)) for line in progress]
    assert counts and all(n % 5 == 0 for n in counts)  # a line every 5 files per worker
    assert any("'decoded': 12, 'quarantined': 1" in r.getMessage() for r in caplog.records)


def test_shards_aim_at_about_150_megabytes():
    config = IngestConfig(image_size=224, channels=1)
    per_example = 224 * 224 + 600
    for n in (1, 3000, 10_000, 100_000):
        shards = _num_shards(n, config)
        assert shards == 1 or 100 * 2**20 <= n * per_example / shards <= 200 * 2**20, (n, shards)
    assert _num_shards(10_000, config) == 4


def test_runner_and_its_options_pass_through():
    options = pipeline_options(IngestConfig(runner="FlinkRunner", beam_args=("--flink_master=flink:8081",
                                                                            "--parallelism=8")))
    flags = options.get_all_options()
    assert flags["runner"] == "FlinkRunner" and flags["flink_master"] == "flink:8081" and flags["parallelism"] == 8
    local = pipeline_options(IngestConfig()).get_all_options()
    assert local["direct_running_mode"] == "in_memory" and local["direct_num_workers"] == 1


@pytest.mark.parametrize("config, workers, threads", [
    (IngestConfig(), 1, CORES),  # in_memory: one worker, whose decode threads use every core
    (IngestConfig(direct_running_mode="multi_threading"), CORES, 1),  # a worker per core
    (IngestConfig(beam_args=("--direct_running_mode=multi_processing",)), CORES, 1),  # beam_args win
    (IngestConfig(beam_args=("--direct_num_workers=2",)), 2, max(1, CORES // 2)),
    (IngestConfig(decode_threads=3, direct_running_mode="multi_threading"), CORES, 3),
    (IngestConfig(runner="DataflowRunner"), 1, 1),  # Dataflow runs a worker process per core
])
def test_decode_threads_share_the_cores_among_the_workers(config, workers, threads):
    options = pipeline_options(config)
    if config.runner == "DirectRunner":
        assert options.get_all_options()["direct_num_workers"] == workers
    assert decode_threads(config, options) == threads


def test_cli_ingest_passes_beam_args_through(tmp_path, capsys):
    from radflow.cli import main

    rng = np.random.default_rng(2)
    for c in ("A", "B"):
        for i in range(3):
            _write(f"{tmp_path}/src/{c}/{c}{i}.png", _png(_image(rng, 40, 40)))
    out = tmp_path / "out"
    assert main(["ingest", str(tmp_path / "src"), str(out), "--image-size", "16", "--resize-policy", "crop",
                 "--channels", "3", f"--beam-args={' '.join(FAST)}", "--patient-id-pattern", r"/(\w+)\.png$"]) == 0
    assert "6 inputs" in capsys.readouterr().out
    metadata = ex.read_metadata(str(out))
    assert (metadata.resize_policy, metadata.channels, metadata.image_size) == ("crop", 3, 16)


def test_manifest_without_label_column_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("path,patient_id\na.png,p1\n")
    with pytest.raises(ValueError, match="lacks column.*label"):
        list_sources(str(tmp_path / "m.csv"), IngestConfig())


def test_ingest_refuses_too_many_bad_files_and_publishes_no_metadata(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(f"{src}/A/a{i}.png", _png(_image(rng, 8, 8)))
        _write(f"{src}/B/b{i}.png", b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(RuntimeError, match="4 of 8 inputs .* quarantined"):
        ingest(str(src), out, IngestConfig(image_size=8, min_side=8, max_quarantined_fraction=0.2, beam_args=FAST,
                                           patient_id_pattern=r"/(\w+)\.png$"))
    assert not os.path.exists(os.path.join(out, ex.METADATA_FILE))
    with pytest.raises(FileNotFoundError, match="not a complete examples directory"):
        ex.read_metadata(out)
    rows = read_manifest(out)  # the manifest still explains every file
    assert sum(r["state"] == QUARANTINED for r in rows) == 4 and len(rows) == 8


def test_unreadable_sources_fail_at_once_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*holds no files"):
        ingest(str(tmp_path / "empty"), str(tmp_path / "out"))
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked"
        (locked / "A").mkdir(parents=True)
        locked.chmod(0)
        try:
            with pytest.raises(PermissionError, match="locked"):
                ingest(str(locked), str(tmp_path / "out"))
        finally:
            locked.chmod(0o755)


def test_patient_key_secret_is_resolved_at_run_time(tmp_path, monkeypatch):
    monkeypatch.delenv("RADFLOW_PATIENT_KEY_SECRET", raising=False)
    secret, source = resolve_patient_key_secret(IngestConfig())
    assert source == "ephemeral" and len(secret) == 64
    assert resolve_patient_key_secret(IngestConfig())[0] != secret  # a new key per run
    with pytest.raises(ValueError, match="no patient key secret"):
        resolve_patient_key_secret(IngestConfig(require_patient_key_secret=True))
    assert resolve_patient_key_secret(IngestConfig(patient_key_secret="c")) == ("c", "config")
    monkeypatch.setenv("RADFLOW_PATIENT_KEY_SECRET", "from-env")
    assert resolve_patient_key_secret(IngestConfig(patient_key_secret="c")) == ("from-env", "env")
    (tmp_path / "key").write_text("from-file\n")
    assert resolve_patient_key_secret(IngestConfig(patient_key_secret_file=str(tmp_path / "key"))) == (
        "from-file", "file")
    with pytest.raises(FileNotFoundError, match="absent"):
        resolve_patient_key_secret(IngestConfig(patient_key_secret_file=str(tmp_path / "absent")))


def test_config_refuses_unknown_policies():
    with pytest.raises(ValueError, match="resize_policy"):
        IngestConfig(resize_policy="stretch")
    with pytest.raises(ValueError, match="official_splits"):
        IngestConfig(official_splits="whatever")
    for field, value in (("min_side", 0), ("max_pixels", 0), ("min_std", -1.0)):
        with pytest.raises(ValueError, match=field):
            IngestConfig(**{field: value})


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit grey pixels, followed by one empty IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_ingest_quarantines_by_the_admission_rules_serving_applies(tmp_path):
    """The size rules read the header, before anything is decoded; the constant rule reads the
    std_intensity ingest stores, the curated schema's minimum; the reasons keep ingest's words."""
    rules = IngestConfig(min_side=16, max_pixels=40_000).admission
    assert rules == admission.AdmissionRules(min_side=16, max_pixels=40_000, min_std=1.0)
    rng = np.random.default_rng(5)
    cases = {
        "wide.png": (_png(_image(rng, 100, 401)), "too many pixels: 401x100 = 40100 px, limit 40000"),
        "bomb.png": (_png_declaring(5_000, 4_000), "too many pixels: 5000x4000 = 20000000 px, limit 40000"),
        "small.jpeg": (_jpeg(_image(rng, 15, 40)), "too small: 40x15 px, minimum side 16"),
        "flat.png": (_png(np.full((20, 30), 200, np.uint8)), "constant: intensity std 0.00 < 1.0 on 0-255"),
        "faint.png": (_png((np.arange(600).reshape(20, 30) % 2 + 100).astype(np.uint8)),
                      "constant: intensity std 0.50 < 1.0 on 0-255"),
        "fine.png": (_png(_image(rng, 100, 400)), ""),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        decoded = decode_file(SourceFile(str(path), "A"), ("A",), 16, 1, rules=rules)
        assert decoded.reason == reason, name
    # PIL's own decompression-bomb limit, above any max_pixels, is refused from the header too.
    path = tmp_path / "huge.png"
    path.write_bytes(_png_declaring(60_000, 60_000))
    decoded = decode_file(SourceFile(str(path), "A"), ("A",), 16, 1)
    assert decoded.reason.startswith("too many pixels: image has more than")


def test_ingest_refuses_to_overwrite_a_finished_output(examples_dir, synth_dir):
    with pytest.raises(FileExistsError):
        ingest(synth_dir, examples_dir)


def test_synth_set_ingests_with_its_corrupt_files_quarantined(examples_dir, synth_dir):
    """The session fixture runs the default multi-processing DirectRunner."""
    rows = read_manifest(examples_dir)
    quarantined = {os.path.relpath(r["path"], synth_dir) for r in rows if r["state"] == QUARANTINED}
    on_disk = sum(len([f for f in files if not f.startswith(".")]) for _, _, files in tf.io.gfile.walk(synth_dir))
    assert len(rows) == on_disk
    assert ex.read_metadata(examples_dir).synthetic  # synth's marker was found (and is not an input)
    assert len(quarantined) == 2
    assert ex.read_metadata(examples_dir).layout == KAGGLE


def test_dated_deliveries_read_all_or_only_the_latest(tmp_path):
    """Retraining sources grow by dated delivery folders, each in the usual layout."""
    from radflow.components.ingest.ingest import select_deliveries

    for day, patient in (("2026-09-01", 1), ("2026-10-01", 2), ("2026-11-01", 3)):
        for label in ("NORMAL", "PNEUMONIA"):
            d = tmp_path / day / "train" / label
            d.mkdir(parents=True)
            (d / f"person{patient}_virus_1.jpeg").write_bytes(b"x")
    every = list_sources(str(tmp_path), IngestConfig())
    assert every.layout == "kaggle" and len(every.files) == 6
    assert {f.split for f in every.files} <= {"train", "val"} and every.labels == ("NORMAL", "PNEUMONIA")
    latest = list_sources(str(tmp_path), IngestConfig(latest_deliveries=2))
    assert sorted({f.rel_path.split("/")[0] for f in latest.files}) == ["2026-10-01", "2026-11-01"]
    # A source whose top folders are not all dates is one delivery: nothing is dropped.
    paths, rels, within = select_deliveries(["a/NORMAL/x.png", "b/x.png"], ["NORMAL/x.png", "2026-01-01/x.png"], 1)
    assert rels == within == ["NORMAL/x.png", "2026-01-01/x.png"]
