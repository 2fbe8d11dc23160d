"""validation_gate: the task after validate that stops the run on validate's recorded verdict."""

import os

import pytest

from radflow import fileio
from radflow.components.validate.config import ValidateConfig
from radflow.components.validate.gate import gate
from radflow.components.validate.validate import RESULT_FILE, DataValidationError, ValidationResult, _to_json

FINDINGS = ["split 'test', feature 'label_name': Unexpected string values — found OTHER",
            "split 'train': the shards hold 10 examples but metadata.json counts 12"]


def _verdict(tmp_path, anomalies):
    result = ValidationResult(str(tmp_path), not anomalies, anomalies, {"train": 10, "val": 2, "test": 3})
    fileio.write_text_atomic(os.path.join(tmp_path, RESULT_FILE), _to_json(result))
    return str(tmp_path)


def test_blocking_findings_fail_with_every_line_and_point_at_the_published_reports(tmp_path):
    with pytest.raises(DataValidationError) as err:
        gate(_verdict(tmp_path, FINDINGS), ValidateConfig())
    message = str(err.value)
    assert message.startswith("data validation found 2 anomalies:\n")
    assert all(f"  - {line}" in message for line in FINDINGS)
    assert "validate task's report and statistics_report artifacts" in message


def test_a_clean_verdict_passes_and_fail_on_anomalies_off_lets_findings_through(tmp_path):
    assert gate(_verdict(tmp_path / "clean", []), ValidateConfig()).passed
    assert gate(_verdict(tmp_path, FINDINGS), ValidateConfig(fail_on_anomalies=False)).anomalies == FINDINGS


def test_a_validate_that_never_finished_is_no_verdict(tmp_path):
    with pytest.raises(FileNotFoundError, match="validate did not finish"):
        gate(str(tmp_path), ValidateConfig())
