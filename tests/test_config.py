import pytest

from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.ingest.config import IngestConfig
from radflow.components.train.config import TrainConfig
from radflow.pipeline.config import ConfigError, PipelineConfig, from_dict, load_config, to_dict


def test_round_trip_through_a_kfp_struct_restores_types():
    # KFP struct parameters carry every number as a double and every tuple as a list.
    as_struct = {"epochs": 3.0, "filters": [8.0, 16.0], "learning_rate": 1, "dropout": 0.5}
    cfg = from_dict(TrainConfig, as_struct)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.filters == (8, 16) and all(isinstance(f, int) for f in cfg.filters)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert from_dict(TrainConfig, to_dict(TrainConfig())) == TrainConfig()
    assert from_dict(EvaluateConfig, {"min_roc_auc": 0}).min_roc_auc == 0.0  # 0 disables a gate
    assert from_dict(PipelineConfig, to_dict(PipelineConfig())) == PipelineConfig()


def test_unknown_keys_name_the_field_they_probably_meant():
    with pytest.raises(ConfigError, match=r"^train\.epoch: unknown option; did you mean train\.epochs\?$"):
        from_dict(TrainConfig, {"epoch": 3})
    with pytest.raises(ConfigError) as err:
        load_config(None, **{"epochs": 3})
    assert str(err.value) == "epochs: unknown option; did you mean train.epochs?"
    with pytest.raises(ConfigError, match=r"train\.wieghts: unknown option; did you mean train\.weights\?"):
        from_dict(PipelineConfig, {"train": {"wieghts": "x.h5"}})
    with pytest.raises(ConfigError, match=r"train\.colour: unknown option; the options here are model, weights, "):
        from_dict(TrainConfig, {"colour": 1})


def test_a_kfp_struct_cannot_smuggle_a_fraction_into_an_integer():
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected an integer, got 2\.5$"):
        from_dict(TrainConfig, {"epochs": 2.5})


def _problems(tmp_path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    return [line.removeprefix(f"{path}:") for line in err.value.problems]


def test_the_issues_config_mistakes_are_each_one_line_with_file_position_and_field(tmp_path):
    # Each of these once ran: augmentation on, a TypeError in train 33 s later, a crash in ingest.
    assert _problems(tmp_path, 'train:\n  augment: "no"\n  epochs: ten\ningest: {image_size: "64"}\n') == [
        "2:12: train.augment: expected true or false, got 'no'",
        "3:11: train.epochs: expected an integer, got 'ten'",
        "4:22: ingest.image_size: expected an integer, got '64'",
    ]
    assert _problems(tmp_path, "train: {epochs: 3.5}\n") == ["1:17: train.epochs: expected an integer, got 3.5"]


def test_booleans_accept_only_booleans_and_numbers_only_numbers(tmp_path):
    assert _problems(tmp_path, "train: {augment: 1, dropout: true, learning_rate: '0.1'}\n") == [
        "1:18: train.augment: expected true or false, got 1",
        "1:30: train.dropout: expected a number, got True",
        "1:51: train.learning_rate: expected a number, got '0.1'",
    ]
    assert load_config(None).train.augment is True  # YAML's own false/no stay booleans
    assert from_dict(PipelineConfig, {"train": {"augment": False}}).train.augment is False


def test_ranges_choices_lists_and_sections(tmp_path):
    assert _problems(tmp_path, "ingest:\n  val_fraction: 1.5\n  image_size: 0\n"
                               "train: {filters: [8, 0], lr_schedule: linear, model: resnet}\n"
                               "evaluate: {min_roc_auc: -0.1}\nclass_balance: weights\n") == [
        "2:17: ingest.val_fraction: expected a value <= 1, got 1.5",
        "3:15: ingest.image_size: expected a value >= 1, got 0",
        "4:22: train.filters[1]: expected a value >= 1, got 0",
        "4:39: train.lr_schedule: expected one of 'constant', 'exponential' or 'cosine', got 'linear'",
        "4:54: train.model: expected one of 'baseline_cnn', 'mobilenet_v2', 'efficientnet_b0', 'resnet50', "
        "'densenet121', 'inception_v3' or 'vgg16', got 'resnet'",
        "5:25: evaluate.min_roc_auc: expected a value >= 0, got -0.1",
        "6:16: class_balance: expected a mapping of options, got 'weights'",
    ]
    assert _problems(tmp_path, "ingest: {labels: NORMAL}\n") == ["1:18: ingest.labels: expected a list, got 'NORMAL'"]


def test_a_stage_check_in_post_init_is_named_by_its_field(tmp_path):
    assert _problems(tmp_path, "ingest: {resize_policy: squash}\n") == [
        "1:25: ingest.resize_policy: must be one of ('pad', 'crop'), got 'squash'"]
    assert _problems(tmp_path, "train: {cv_folds: 1}\n") == [
        "1:19: train.cv_folds: must be 0 (no cross-validation) or at least 2, got 1"]


def test_yaml_errors_are_one_line_with_line_and_column(tmp_path):
    assert _problems(tmp_path, "train:\n  epochs: 3\n   batch_size: 4\n") == [
        "3:14: not valid YAML: mapping values are not allowed here"]
    assert _problems(tmp_path, "train:\n  epochs: 3\n  epochs: 4\n") == [
        "3:3: train.epochs: given twice (first on line 2)"]
    path = tmp_path / "list.yaml"
    path.write_text("- train\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping of options \(data, serving_root, "):
        load_config(str(path))
    with pytest.raises(FileNotFoundError, match="config file .*nope.yaml not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_yaml_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: /x\ningest: {image_size: 96, labels: [NORMAL, PNEUMONIA, COVID19]}\ntrain: {epochs: 4}\n")
    cfg = load_config(str(path), serving_root="/srv", data=None)
    assert cfg.data == "/x" and cfg.serving_root == "/srv"
    assert cfg.ingest == IngestConfig(image_size=96, labels=("NORMAL", "PNEUMONIA", "COVID19"))
    assert cfg.train.epochs == 4 and cfg.train.batch_size == TrainConfig().batch_size
    assert load_config() == PipelineConfig()
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert load_config(str(tmp_path / "empty.yaml")) == PipelineConfig()
