import subprocess
import sys

import pytest

from radflow.cli import build_parser, main

COMMANDS = ["synth", "run", "compile", "ingest", "validate", "class-balance", "train", "evaluate", "push"]


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


def test_run_without_data_says_how_to_get_some(tmp_path, capsys):
    assert main(["run", "--local", "--data", str(tmp_path / "missing")]) == 2
    assert "radflow synth" in capsys.readouterr().err


def test_stage_errors_exit_1_with_the_reason(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_compile_writes_yaml(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    assert "pipelineInfo" in out.read_text()
