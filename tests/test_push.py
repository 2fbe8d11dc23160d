import os

import pytest

from radflow.components.evaluate.evaluate import BLESSING_FILE, Blessing
from radflow.components.push.config import PushConfig
from radflow.components.push.push import push, versions


def _blessing(tmp_path, blessed: bool) -> str:
    d = tmp_path / f"eval-{blessed}"
    d.mkdir()
    (d / BLESSING_FILE).write_text(Blessing(blessed, "because").to_json())
    return str(d)


def test_unblessed_model_is_not_pushed(model_dir, tmp_path):
    result = push(model_dir, _blessing(tmp_path, False), str(tmp_path / "serving"))
    assert not result.pushed and "not blessed" in result.reason
    assert not (tmp_path / "serving").exists()


def test_blessed_pushes_increase_the_version_and_leave_no_staging(model_dir, tmp_path):
    root = tmp_path / "serving"
    blessed = _blessing(tmp_path, True)
    first = push(model_dir, blessed, str(root))
    second = push(model_dir, blessed, str(root), PushConfig(model_name="radflow"))
    assert (first.version, second.version) == (1, 2)
    assert versions(str(root / "radflow")) == [1, 2]
    assert os.path.exists(root / "radflow" / "2" / "saved_model.pb")
    assert os.listdir(root / "radflow") == ["1", "2"] or sorted(os.listdir(root / "radflow")) == ["1", "2"]


def test_existing_versions_are_never_overwritten(model_dir, tmp_path):
    root = tmp_path / "serving" / "radflow"
    (root / "7").mkdir(parents=True)
    (root / "7" / "marker").write_text("old")
    result = push(model_dir, _blessing(tmp_path, True), str(tmp_path / "serving"))
    assert result.version == 8
    assert (root / "7" / "marker").read_text() == "old"


def test_push_refuses_an_unfinished_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="saved_model"):
        push(str(tmp_path / "empty"), _blessing(tmp_path, True), str(tmp_path / "serving"))
