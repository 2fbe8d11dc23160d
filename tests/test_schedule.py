"""`radflow schedule`: recurring runs, against a loopback server answering KFP's v2beta1 REST paths."""

import json

import pytest
from apiserver import KfpApi

from radflow.cli import main
from radflow.pipeline.schedule import check_cron

EXISTING = [
    {"recurring_run_id": "rr-1", "display_name": "radflow-retrain", "status": "ENABLED",
     "trigger": {"cron_schedule": {"cron": "0 0 1 * * *"}}},
    {"recurring_run_id": "rr-2", "display_name": "other", "status": "ENABLED",
     "trigger": {"cron_schedule": {"cron": "0 0 2 * * *"}}},
]


@pytest.fixture(autouse=True)
def _home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp context of the machine running the tests


def test_schedule_creates_one_at_a_time_no_catchup_and_replaces_the_same_name(capsys):
    with KfpApi(recurring=[dict(r) for r in EXISTING]) as kfp:
        code = main(["schedule", "--host", kfp.server.url, "--cron", "0 0 3 * * 0", "--param", "data=gs://b/xray"])
        remaining = {r["recurring_run_id"]: r["display_name"] for r in kfp.recurring}
    assert code == 0
    calls = kfp.server.calls()
    assert calls[:2] == [("GET", "/apis/v2beta1/healthz")] * 2  # kfp.Client's, then radflow's multi-user question
    assert calls[2:] == [
        ("GET", "/apis/v2beta1/recurringruns"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/recurringruns"),
        ("DELETE", "/apis/v2beta1/recurringruns/rr-1"),  # the old one goes only after the new one exists
    ]
    name_filter = json.loads(kfp.server.requests[2].query["filter"][0])
    assert name_filter["predicates"][0] == {"operation": "EQUALS", "key": "display_name",
                                            "stringValue": "radflow-retrain"}
    body = kfp.server.requests[5].body
    assert body["display_name"] == "radflow-retrain"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"data": "gs://b/xray"}
    assert set(body["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]) >= {"ingest", "train", "push"}
    assert remaining == {"rr-2": "other", "rr-102": "radflow-retrain"}
    assert "one run at a time, no catch-up" in capsys.readouterr().out


def test_list_shows_every_schedule(capsys):
    with KfpApi(recurring=[dict(r) for r in EXISTING]) as kfp:
        assert main(["schedule", "--host", kfp.server.url, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["radflow-retrain\t0 0 1 * * *\tENABLED\trr-1", "other\t0 0 2 * * *\tENABLED\trr-2"]


def test_delete_by_name_removes_only_that_one(capsys):
    with KfpApi(recurring=[dict(r) for r in EXISTING]) as kfp:
        assert main(["schedule", "--host", kfp.server.url, "--delete", "other"]) == 0
        assert [r["recurring_run_id"] for r in kfp.recurring] == ["rr-1"]
    assert kfp.server.calls("DELETE") == [("DELETE", "/apis/v2beta1/recurringruns/rr-2")]


def test_deleting_an_unknown_name_fails_and_lists_the_existing(capsys):
    with KfpApi(recurring=[dict(r) for r in EXISTING]) as kfp:
        assert main(["schedule", "--host", kfp.server.url, "--delete", "nightly"]) == 1
    assert kfp.server.calls("DELETE") == []
    assert "no recurring run named 'nightly'; existing: ['other', 'radflow-retrain']" in capsys.readouterr().err


@pytest.mark.parametrize("cron", ["0 3 * * 0", "daily"])
def test_five_field_cron_is_refused(cron):
    with pytest.raises(ValueError, match="6 fields"):
        check_cron(cron)
