"""radflow against a multi-user KFP (every full Kubeflow install): namespace, token, cookie, CA, and refusals.

The loopback server answers as KFP 2.5 with MULTIUSER=true does (tests/apiserver.py, MultiUser): no
namespace is a 400, no or an unknown identity a 401, a namespace the user may not use a 403.
"""

import re

import pytest
from apiserver import KfpApi, MultiUser

from radflow.cli import main
from radflow.pipeline.auth import Connection, connect
from radflow.pipeline.submit import submit

TOKEN = "alice-token"
MULTI = MultiUser(tokens={TOKEN: "alice@example.com", "bob-token": "bob@example.com"},
                  profiles={"team-xray": {"alice@example.com"}},
                  cookies={"oauth2_proxy_kubeflow=alice-session": "alice@example.com"})


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the machine running the tests
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIES", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


def _api():
    return KfpApi(multi_user=MULTI)


def test_submit_with_a_namespace_and_a_token_is_accepted_and_every_call_carries_them(capsys):
    with _api() as kfp:
        code = main(["submit", "--host", kfp.server.url, "--namespace", "team-xray", "--existing-token", TOKEN,
                     "--param", "train.epochs=2"])
    assert code == 0, capsys.readouterr().err
    assert kfp.experiments[0]["namespace"] == "team-xray"
    (run,) = kfp.runs
    assert run["namespace"] == "team-xray" and run["experiment_id"] == kfp.experiments[0]["experiment_id"]
    api_calls = [r for r in kfp.server.requests if not r.path.endswith("/healthz")]
    assert api_calls and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in api_calls)
    listing = next(r for r in api_calls if r.method == "GET" and r.path.endswith("/experiments"))
    assert listing.query["namespace"] == ["team-xray"]


def test_without_a_namespace_radflow_stops_before_sending_anything_and_says_what_to_pass(capsys):
    with _api() as kfp:
        assert main(["submit", "--host", kfp.server.url, "--existing-token", TOKEN]) == 1
    assert "is multi-user: pass --namespace with your Kubeflow profile" in capsys.readouterr().err
    assert {path for _, path in kfp.server.calls()} == {"/apis/v2beta1/healthz"}


def test_the_server_itself_refuses_an_empty_namespace_as_kfp_2_5_does():
    """Past radflow's own check: the request radflow used to send (namespace "") is a 400 in multi-user mode."""
    with _api() as kfp:
        session = connect(Connection(kfp.server.url, "team-xray", existing_token=TOKEN))
        with pytest.raises(Exception, match="An experiment cannot have an empty namespace in multi-user mode"):
            submit(session.client, None, {}, namespace="", version=None)
    assert kfp.experiments == [] and kfp.runs == []


@pytest.mark.parametrize("flags, expected", [
    ([], r"refused an unauthenticated request \(401: .*there is no user identity header"),
    (["--existing-token", "stolen"], r"refused an unauthenticated request \(401: .*Authenticated is false"),
    (["--existing-token", "bob-token"], r"denied the request \(403: User 'bob@example.com' is not authorized"),
])
def test_without_a_valid_identity_or_access_nothing_is_created_and_the_error_says_how_to_log_in(
        flags, expected, capsys):
    with _api() as kfp:
        assert main(["submit", "--host", kfp.server.url, "--namespace", "team-xray", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("radflow submit: error: KFP at ")
    assert re.search(expected, err), err
    assert kfp.experiments == [] and kfp.runs == []


def test_a_session_cookie_from_a_dex_login_is_sent_on_every_call():
    with _api() as kfp:
        assert main(["runs", "list", "--host", kfp.server.url, "--namespace", "team-xray",
                     "--cookies", "oauth2_proxy_kubeflow=alice-session"]) == 0
    assert all(r.headers["cookie"] == "oauth2_proxy_kubeflow=alice-session" for r in kfp.server.requests)


def test_endpoint_token_and_cookie_default_to_the_environment_read_when_the_command_runs(monkeypatch, capsys):
    with _api() as kfp:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp.server.url)
        monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
        assert main(["runs", "list", "--namespace", "team-xray"]) == 0
    assert kfp.server.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"


def test_no_endpoint_at_all_is_refused_with_both_ways_to_give_one(capsys):
    assert main(["runs", "list", "--namespace", "team-xray"]) == 1
    assert "no KFP endpoint: pass --host or set KF_PIPELINES_ENDPOINT" in capsys.readouterr().err


def test_an_in_cluster_service_account_token_is_read_from_its_file_on_every_request(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with _api() as kfp:
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))  # --sa-token without a path: kfp's variable
        assert main(["runs", "list", "--host", kfp.server.url, "--namespace", "team-xray", "--sa-token"]) == 0
        first = kfp.server.requests[-1].headers["authorization"]
        token.write_text("bob-token")  # the kubelet rotated it
        assert main(["runs", "list", "--host", kfp.server.url, "--namespace", "team-xray",
                     "--sa-token", str(token)]) == 1  # bob may not use team-xray: the new token was sent
    assert first == f"Bearer {TOKEN}"
    assert kfp.server.requests[-1].headers["authorization"] == "Bearer bob-token"


@pytest.mark.parametrize("flags, message", [
    (["--ssl-ca-cert", "/nonexistent/ca.pem"], "ssl_ca_cert '/nonexistent/ca.pem' does not exist"),
    (["--existing-token", TOKEN, "--sa-token", "/tmp"], "give one bearer token"),
])
def test_bad_credentials_options_are_refused_before_any_request(flags, message, capsys):
    with _api() as kfp:
        assert main(["runs", "list", "--host", kfp.server.url, "--namespace", "team-xray", *flags]) == 1
    assert message in capsys.readouterr().err
    assert kfp.server.requests == []


def test_a_host_without_a_scheme_is_refused_rather_than_guessed():
    with pytest.raises(ValueError, match="expected http"):
        connect(Connection("kubeflow.example.com"))


def test_schedule_lists_creates_and_deletes_in_the_profile():
    with _api() as kfp:
        base = ["schedule", "--host", kfp.server.url, "--namespace", "team-xray", "--existing-token", TOKEN]
        assert main([*base, "--cron", "0 0 3 * * 0"]) == 0
        (created,) = kfp.recurring
        assert created["namespace"] == "team-xray"
        assert main([*base, "--list"]) == 0
        listing = [r for r in kfp.server.requests if r.method == "GET" and r.path.endswith("/recurringruns")]
        assert {tuple(r.query["namespace"]) for r in listing} == {("team-xray",)}
        assert main([*base, "--delete", "radflow-retrain"]) == 0
        assert kfp.recurring == []


def test_an_endpoint_nobody_answers_is_one_line_not_a_traceback(capsys):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["runs", "list", "--host", f"http://127.0.0.1:{port}"]) == 1
    assert f"radflow runs: error: cannot reach KFP at http://127.0.0.1:{port}" in capsys.readouterr().err
