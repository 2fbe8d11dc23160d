"""Connecting to a Kubeflow Pipelines API, single-user (KFP standalone) or multi-user (full Kubeflow).

A multi-user KFP answers a request only when it says who is asking and in which Kubeflow profile
(namespace). Facts from kubeflow/pipelines at tag 2.5.0 (d07cf1c7), backend/src/apiserver:
- identity (auth/auth.go): either the `kubeflow-userid` header, which Kubeflow's gateway sets once
  oauth2-proxy/Dex accepted the session cookie, or `Authorization: Bearer <token>`, checked by a
  TokenReview for the audience `pipelines.kubeflow.org` (common/const.go). Without one: 401.
- namespace: experiments, runs and recurring runs need one ("An experiment cannot have an empty
  namespace in multi-user mode", server/experiment_server.go); runs take their experiment's.
- access: a SubjectAccessReview of that user on that namespace (resource/resource_manager.go): 403.

kfp.Client (2.13, kfp/client/client.py) can carry each credential: `existing_token` (a bearer token),
`credentials` (here ServiceAccountTokenVolumeCredentials: a projected service-account token file,
re-read on every request, for pods in the cluster), `cookies` (the gateway's session cookie) and
`ssl_ca_cert`. It passes no namespace by itself unless one is in its context file: radflow resolves
the namespace once and passes it on every call. Nothing here reads the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

LOGIN_HELP = ("log in with --existing-token (or KF_PIPELINES_TOKEN), --sa-token in a pod, or --cookies with the "
              "Kubeflow session cookie (docs/cluster.md, 'Multi-user Kubeflow')")


@dataclass(frozen=True)
class Connection:
    """Where the KFP API is and how to prove who is calling.

    Args:
        host: the API endpoint, http(s)://..., e.g. http://localhost:8080 or https://kubeflow.example.com/pipeline.
        namespace: the Kubeflow profile to work in; "" = the one in kfp's context file
            (~/.config/kfp/context.json) or, inside a pod, the pod's own namespace.
        existing_token: a bearer token (e.g. `kubectl create token default-editor -n PROFILE
            --audience pipelines.kubeflow.org`).
        sa_token_path: a projected service-account token file, re-read on every request.
        cookies: the Cookie header value of a logged-in browser session, e.g. "oauth2_proxy_kubeflow=...".
        ssl_ca_cert: a PEM file of the CA that signed the endpoint's certificate.
    """

    host: str
    namespace: str = ""
    existing_token: str = ""
    sa_token_path: str = ""
    cookies: str = ""
    ssl_ca_cert: str = ""


@dataclass(frozen=True)
class Session:
    """A connected kfp.Client and the namespace every call passes ("" on a single-user KFP)."""

    client: Any
    host: str
    namespace: str
    multi_user: bool


def connect(connection: Connection) -> Session:
    """Builds the client, asks the API whether it is multi-user, and settles the namespace.

    Returns:
        The session.

    Raises:
        ValueError: no or a malformed host, two token sources at once, or a multi-user KFP and no namespace.
        FileNotFoundError: the CA certificate or the token file does not exist.
        RuntimeError: the endpoint did not answer as the KFP API does (a login page, a proxy error).
    """
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    host = connection.host.rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise ValueError(f"KFP host {connection.host!r}: expected http(s)://HOST[:PORT][/PATH], "
                         "e.g. http://localhost:8080")
    if connection.existing_token and connection.sa_token_path:
        raise ValueError("give one bearer token: --existing-token (KF_PIPELINES_TOKEN) or --sa-token, not both")
    for what, path in (("ssl_ca_cert", connection.ssl_ca_cert), ("service-account token", connection.sa_token_path)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path!r} does not exist")
    credentials = ServiceAccountTokenVolumeCredentials(connection.sa_token_path) if connection.sa_token_path else None
    with warnings.catch_warnings(), api_errors(host):  # "only works with KFP v2.0.0-beta.2 and later": ours is later
        warnings.simplefilter("ignore", FutureWarning)
        client = kfp.Client(host=host, existing_token=connection.existing_token or None,
                            cookies=connection.cookies or None, ssl_ca_cert=connection.ssl_ca_cert or None,
                            credentials=credentials)
        # Raw, because behind Kubeflow's gateway a request without a session is answered by the login page.
        answer = client.healthzs.healthz_service_get_healthz(_preload_content=False)
    try:
        health = json.loads(answer.data)
    except ValueError:
        health = None
    if not isinstance(health, dict):
        raise RuntimeError(f"{host}/apis/v2beta1/healthz did not answer as the KFP API does (a login page?): "
                           f"{LOGIN_HELP}")
    multi_user = bool(health.get("multi_user"))
    namespace = connection.namespace or (client.get_user_namespace() if multi_user else "")
    if multi_user and not namespace:
        raise ValueError(f"KFP at {host} is multi-user: pass --namespace with your Kubeflow profile (the namespace "
                         "the Kubeflow dashboard shows), and " + LOGIN_HELP)
    return Session(client, host, namespace if multi_user else "", multi_user)


@contextlib.contextmanager
def api_errors(host: str) -> Iterator[None]:
    """Turns the KFP API's refusals into RuntimeErrors that say what happened and what to do.

    Raises:
        RuntimeError: from kfp_server_api.ApiException, with KFP's own message, or from a connection error.
    """
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as err:
        raise RuntimeError(describe_api_error(err, host)) from err
    except urllib3.exceptions.HTTPError as err:  # refused, unresolvable, TLS: kfp_server_api lets these through
        raise RuntimeError(f"cannot reach KFP at {host}: {err}") from err


def describe_api_error(err: Any, host: str) -> str:
    """One line for a kfp_server_api.ApiException: status, KFP's message, and the likely remedy."""
    message = err.reason or ""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(err.body).get("message") or message
    if err.status == 401:
        return f"KFP at {host} refused an unauthenticated request (401: {message}): {LOGIN_HELP}"
    if err.status == 403:
        return (f"KFP at {host} denied the request (403: {message}): the user needs edit access to the namespace "
                "(a Kubeflow profile contributor)")
    return f"KFP at {host} answered {err.status}: {message}"
