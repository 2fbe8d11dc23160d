import pytest

from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.ingest.config import IngestConfig
from radflow.components.train.config import TrainConfig
from radflow.pipeline.config import PipelineConfig, from_dict, load_config, to_dict


def test_round_trip_through_a_kfp_struct_restores_types():
    # KFP struct parameters carry every number as a double and every tuple as a list.
    as_struct = {"epochs": 3.0, "filters": [8.0, 16.0], "learning_rate": 1, "dropout": 0.5}
    cfg = from_dict(TrainConfig, as_struct)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.filters == (8, 16) and all(isinstance(f, int) for f in cfg.filters)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert from_dict(TrainConfig, to_dict(TrainConfig())) == TrainConfig()
    assert from_dict(EvaluateConfig, {"min_roc_auc": 0}).min_roc_auc == 0.0  # 0 disables a gate


def test_unknown_keys_and_fractional_ints_are_refused():
    with pytest.raises(ValueError, match=r"unknown TrainConfig option\(s\) \['epoch'\]"):
        from_dict(TrainConfig, {"epoch": 3})
    with pytest.raises(ValueError, match="expected an integer"):
        from_dict(TrainConfig, {"epochs": 2.5})


def test_yaml_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: /x\ningest: {image_size: 96, labels: [NORMAL, PNEUMONIA, COVID19]}\ntrain: {epochs: 4}\n")
    cfg = load_config(str(path), serving_root="/srv", data=None)
    assert cfg.data == "/x" and cfg.serving_root == "/srv"
    assert cfg.ingest == IngestConfig(image_size=96, labels=("NORMAL", "PNEUMONIA", "COVID19"))
    assert cfg.train.epochs == 4 and cfg.train.batch_size == TrainConfig().batch_size
    assert load_config() == PipelineConfig()
