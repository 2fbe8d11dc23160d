"""`radflow upload` (pipeline versions), runs from a version, and `radflow runs`, against a multi-user KFP."""

import pytest
from apiserver import KfpApi, MultiUser

from radflow import __version__
from radflow.cli import main
from radflow.pipeline.compile import compile_pipeline
from radflow.pipeline.config import PipelineConfig
from radflow.pipeline.upload import version_name

TOKEN = "alice-token"
MULTI = MultiUser(tokens={TOKEN: "alice@example.com"}, profiles={"team-xray": {"alice@example.com"}})


@pytest.fixture(autouse=True)
def _home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))


def _login(kfp):
    return ["--host", kfp.server.url, "--namespace", "team-xray", "--existing-token", TOKEN]


def test_upload_registers_the_compiled_spec_as_a_named_version_once(tmp_path, capsys):
    expected = version_name(compile_pipeline(PipelineConfig(), str(tmp_path / "radflow.yaml")))
    assert expected.startswith(f"{__version__}-") and len(expected) == len(__version__) + 13
    with KfpApi(multi_user=MULTI) as kfp:
        assert main(["upload", *_login(kfp)]) == 0
        first = capsys.readouterr().out
        assert main(["upload", *_login(kfp)]) == 0  # the same release and config: nothing new
        second = capsys.readouterr().out
    (pipeline,) = kfp.pipelines
    assert (pipeline["display_name"], pipeline["namespace"]) == ("radflow", "team-xray")
    (version,) = kfp.versions
    assert version["display_name"] == expected
    assert version["pipeline_spec"]["pipelineInfo"]["name"] == "radflow"
    # The uploaded file is the compiled pipeline with its integers: the UI shows epochs 30, not 30.0.
    train_default = version["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]["train_config"]
    assert type(train_default["defaultValue"]["epochs"]) is int
    assert f"version {expected}: uploaded (id pv-1)" in first
    assert f"{kfp.server.url}/#/pipelines/details/p-1/version/pv-1" in first
    assert f"version {expected}: already there (id pv-1)" in second
    uploads = [r for r in kfp.server.requests if r.path.endswith("/upload_version")]
    assert len(uploads) == 1 and uploads[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert uploads[0].query["pipelineid"] == ["p-1"] and uploads[0].query["name"] == [expected]


def test_a_changed_config_is_a_new_version_of_the_same_pipeline(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {epochs: 5}\n")
    with KfpApi(multi_user=MULTI) as kfp:
        assert main(["upload", *_login(kfp)]) == 0
        assert main(["upload", *_login(kfp), "--config", str(tmp_path / "c.yaml")]) == 0
    assert len(kfp.pipelines) == 1
    assert len({v["display_name"] for v in kfp.versions}) == 2


def test_submit_and_schedule_reference_an_uploaded_version_instead_of_an_inline_spec(tmp_path, capsys):
    with KfpApi(multi_user=MULTI) as kfp:
        assert main(["upload", *_login(kfp)]) == 0
        name = kfp.versions[0]["display_name"]
        assert main(["submit", *_login(kfp), "--pipeline-version", name, "--param", "train.epochs=3"]) == 0
        assert main(["schedule", *_login(kfp), "--pipeline-version", name, "--cron", "0 0 3 * * 0"]) == 0
    (run,) = kfp.runs
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "pv-1"}
    assert "pipeline_spec" not in run
    assert run["runtime_config"]["parameters"]["train_config"]["epochs"] == 3
    (recurring,) = kfp.recurring
    assert recurring["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "pv-1"}
    assert f"pipeline version {name}" in capsys.readouterr().out


def test_an_unknown_version_is_refused_naming_the_ones_there_are(capsys):
    with KfpApi(multi_user=MULTI) as kfp:
        assert main(["submit", *_login(kfp), "--pipeline-version", "0.0.1-000000000000"]) == 1
        assert "no pipeline named 'radflow' in namespace 'team-xray': run `radflow upload` first" in \
            capsys.readouterr().err
        assert main(["upload", *_login(kfp)]) == 0
        name = kfp.versions[0]["display_name"]
        assert main(["submit", *_login(kfp), "--pipeline-version", "0.0.1-000000000000"]) == 1
    assert f"has no version '0.0.1-000000000000'; newest: ['{name}']" in capsys.readouterr().err
    assert kfp.runs == []


def _task(name, state, message=None):
    task = {"display_name": name, "state": state}
    if message:
        task["error"] = {"code": 2, "message": message}
    return task


def _stored_run(run_id, state, tasks=()):
    return {"run_id": run_id, "display_name": f"nightly {run_id}", "state": state, "namespace": "team-xray",
            "experiment_id": "exp-1", "created_at": "2026-01-01T03:00:00Z",
            "run_details": {"task_details": [_task("root", state), *tasks]}}


EXPERIMENT = {"experiment_id": "exp-1", "display_name": "radflow", "namespace": "team-xray"}


def test_runs_list_shows_the_profiles_runs_newest_first(capsys):
    runs = [_stored_run("run-a", "SUCCEEDED"), _stored_run("run-b", "RUNNING"),
            {**_stored_run("run-c", "RUNNING"), "namespace": "other-team"}]
    with KfpApi(multi_user=MULTI, experiments=[EXPERIMENT], runs=runs) as kfp:
        assert main(["runs", "list", *_login(kfp), "--experiment", "radflow", "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["run-a", "SUCCEEDED"], ["run-b", "RUNNING"]]
    listing = kfp.server.requests[-1]
    assert listing.query["sort_by"] == ["created_at desc"] and listing.query["page_size"] == ["5"]
    assert listing.query["experiment_id"] == ["exp-1"]


def test_runs_get_names_each_steps_state_and_the_failed_steps_message(capsys):
    failed = _stored_run("run-f", "FAILED", [
        _task("ingest", "SUCCEEDED"), _task("validate", "SUCCEEDED"),
        _task("validation-gate", "FAILED", "data validation found 1 anomalies: split 'test': label_name 'OTHER'"),
        _task("validation-gate-driver", "SUCCEEDED")])
    with KfpApi(multi_user=MULTI, experiments=[EXPERIMENT], runs=[failed]) as kfp:
        assert main(["runs", "get", "run-f", *_login(kfp)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("run run-f 'nightly run-f': FAILED (created 2026-01-01")
    assert out[1:4] == ["  ingest: SUCCEEDED", "  validate: SUCCEEDED",
                        "  validation-gate: FAILED: data validation found 1 anomalies: split 'test': "
                        "label_name 'OTHER'"]
    assert out[-1] == f"{kfp.server.url}/#/runs/details/run-f"


def test_runs_cancel_terminates_an_active_run_and_refuses_a_finished_one(capsys):
    runs = [_stored_run("run-r", "RUNNING"), _stored_run("run-s", "SUCCEEDED")]
    with KfpApi(multi_user=MULTI, experiments=[EXPERIMENT], runs=runs) as kfp:
        assert main(["runs", "cancel", "run-r", *_login(kfp)]) == 0
        assert main(["runs", "cancel", "run-s", *_login(kfp)]) == 1
    assert kfp.server.calls("POST") == [("POST", "/apis/v2beta1/runs/run-r:terminate")]
    assert kfp.runs[0]["state"] == "CANCELING"
    captured = capsys.readouterr()
    assert "cancelling run run-r (was RUNNING)" in captured.out
    assert "run run-s has already ended (SUCCEEDED): nothing to cancel" in captured.err


def test_runs_of_another_profile_are_not_readable(capsys):
    with KfpApi(multi_user=MULTI, runs=[{**_stored_run("run-x", "RUNNING"), "namespace": "other-team"}]) as kfp:
        assert main(["runs", "get", "run-x", *_login(kfp)]) == 1
    assert "denied the request (403: User 'alice@example.com' is not authorized" in capsys.readouterr().err
