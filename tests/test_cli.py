import json
import os
import subprocess
import sys

import pytest

from radflow.cli import _schema_fields, build_parser, main
from radflow.components.validate.config import CURATED_DIR

COMMANDS = ["synth", "run", "compile", "ingest", "validate", "class-balance", "train", "evaluate", "push", "config"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_teaching_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example: radflow" in out or command == "class-balance" and "radflow class-balance" in out


def test_console_script_starts_without_loading_tensorflow():
    code = "import sys; from radflow.cli import build_parser; build_parser(); print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def _answer(argv: list[str], cwd) -> dict:
    """`radflow ARGV` in a fresh interpreter: exit code, stderr, and whether TensorFlow or kfp got imported."""
    code = ("import json, sys\nfrom radflow.cli import main\nrc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('tensorflow', 'kfp', 'apache_beam') "
            "if m in sys.modules)}))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, timeout=60)
    return {**json.loads(done.stdout.splitlines()[-1]), "err": done.stderr}


def test_a_mistyped_data_folder_is_answered_before_anything_heavy_loads_and_not_with_synth(tmp_path):
    (tmp_path / "data" / "chest_xray" / "train").mkdir(parents=True)
    (tmp_path / "data" / "chest_xray" / "train" / "a.png").write_bytes(b"x")
    answer = _answer(["run", "--data", "data/chest_xrya"], tmp_path)
    assert answer["rc"] == 2 and answer["heavy"] == []
    assert answer["err"] == ("radflow run: error: --data data/chest_xrya: no such folder; did you mean "
                             "data/chest_xray?\n")


def test_an_empty_folder_and_a_missing_default_sample_say_what_is_expected(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    answer = _answer(["run", "--data", "empty"], tmp_path)
    assert answer["rc"] == 2 and answer["heavy"] == []
    assert answer["err"] == ("radflow run: error: --data empty: holds no files; expected split folders "
                             "(train|val|test/<class>/...) or class folders (<class>/...) of images\n")
    answer = _answer(["run"], tmp_path)  # the default data/sample: this one may be written with synth
    assert answer["rc"] == 2 and "`make sample` (or `radflow synth data/sample`)" in answer["err"]


def test_a_bad_config_value_is_answered_before_anything_heavy_loads(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: ten\n")
    answer = _answer(["run", "--config", "bad.yaml"], tmp_path)
    assert answer["rc"] == 1 and answer["heavy"] == []
    assert answer["err"] == "radflow run: error: bad.yaml:2:11: train.epochs: expected an integer, got 'ten'\n"


def test_config_check_names_every_problem_and_passes_good_files(tmp_path, capsys):
    (tmp_path / "good.yaml").write_text("train: {epochs: 3}\n")
    (tmp_path / "bad.yaml").write_text("train: {augment: 'no'}\n")
    assert main(["config", "check", str(tmp_path / "good.yaml"), str(tmp_path / "bad.yaml")]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'good.yaml'}: ok\n"
    assert captured.err == f"radflow config: error: {tmp_path / 'bad.yaml'}:1:18: train.augment: expected true or " \
                           "false, got 'no'\n"


def test_schema_flag_infers_names_a_curated_schema_or_a_file_and_refuses_the_empty_string(tmp_path):
    assert _schema_fields("infer") == {"schema_name": "", "schema_path": ""}
    assert _schema_fields("chest_xray") == {"schema_name": "chest_xray", "schema_path": ""}
    (tmp_path / "brain.pbtxt").write_text("")
    assert _schema_fields(str(tmp_path / "brain.pbtxt")) == {"schema_path": str(tmp_path / "brain.pbtxt")}
    assert _schema_fields(None) == {}
    with pytest.raises(ValueError, match="--schema needs infer, a curated schema name"):
        _schema_fields("")  # once silently the chest X-ray schema
    with pytest.raises(FileNotFoundError, match="no such schema file"):
        _schema_fields(str(tmp_path / "typo.pbtxt"))


def test_schema_freeze_never_replaces_an_existing_schema_unless_forced(tmp_path, capsys):
    shipped = os.path.join(CURATED_DIR, "chest_xray.pbtxt")
    before = open(shipped).read()
    assert main(["schema", "freeze", str(tmp_path), "--name", "chest_xray"]) == 1
    assert "(shipped with radflow); choose another --name, or pass --force" in capsys.readouterr().err
    assert open(shipped).read() == before
    (tmp_path / "mine.pbtxt").write_text("kept")
    assert main(["schema", "freeze", str(tmp_path), "--name", "mine", "--dir", str(tmp_path)]) == 1
    assert (tmp_path / "mine.pbtxt").read_text() == "kept"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["schema", "freeze", str(tmp_path)])  # --name has no default any more


def test_resume_takes_the_interrupted_runs_config_and_refuses_other_sources(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--data", "x"]) == 1
    assert "--resume reruns the interrupted run's own config; drop --data" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 1
    assert "is not a radflow run folder" in capsys.readouterr().err


def test_stage_errors_exit_1_with_the_reason(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_compile_writes_yaml(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    assert "pipelineInfo" in out.read_text()
