"""configs/: every example loads, compiles, fits the GPU pool it describes, and says how to use it."""

from pathlib import Path

import pytest
import yaml

from radflow.pipeline.capacity import capacity
from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.yaml"))


def test_the_examples_cover_the_common_cases():
    assert {p.stem for p in EXAMPLES} == {"chest_xray_3class", "brain_mri_4class", "dicom", "transfer_learning",
                                          "cross_validation", "gke"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_loads_compiles_fits_its_gpu_pool_and_says_how_to_run_it(path, tmp_path):
    text = path.read_text()
    assert text.startswith("# ") and f"--config configs/{path.name}" in text
    config = load_config(str(path))  # the whole file is checked: types, bounds, choices, unknown keys
    spec, *_ = yaml.safe_load_all(Path(compile_pipeline(config, str(tmp_path / "p.yaml"))).read_text())
    assert spec["pipelineInfo"]["name"] == "radflow"
    found = capacity(config)
    assert not found.errors, found.errors


def test_each_example_sets_what_its_case_needs(tmp_path):
    chest = load_config(str(CONFIGS / "chest_xray_3class.yaml"))
    assert chest.ingest.labels == ("NORMAL", "BACTERIA", "VIRUS") and chest.validate.schema_name == ""
    brain = load_config(str(CONFIGS / "brain_mri_4class.yaml"))
    assert brain.ingest.allow_image_level_splits and brain.ingest.patient_id_regex is None
    assert brain.validate.schema_name == ""
    dicom = load_config(str(CONFIGS / "dicom.yaml"))
    assert dicom.ingest.patient_id_regex is None and dicom.ingest.require_patient_key_secret
    transfer = load_config(str(CONFIGS / "transfer_learning.yaml"))
    assert transfer.train.model == "mobilenet_v2" and transfer.train.weights.endswith(".weights.h5")
    assert transfer.train.fine_tune_epochs > 0
    folds = load_config(str(CONFIGS / "cross_validation.yaml"))
    assert folds.train.cv_folds == 5
    spec, *_ = yaml.safe_load_all(Path(compile_pipeline(folds, str(tmp_path / "cv.yaml"))).read_text())
    assert sorted(t for t in spec["root"]["dag"]["tasks"] if t.startswith("train-fold")) == [
        "train-fold", *(f"train-fold-{i}" for i in range(2, 6))]
    gke = load_config(str(CONFIGS / "gke.yaml"))
    assert gke.data.startswith("gs://") and gke.serving_root.startswith("gs://") and gke.cluster.registry
