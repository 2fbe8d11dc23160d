"""A loopback HTTP server that answers REST paths from a route table and records every request.

The Kubernetes and KFP clients then talk real HTTP to it, so tests see exactly what they send.
`KfpApi(multi_user=MultiUser(...))` answers as a multi-user KFP 2.5 does (see MultiUser).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# (method, path regex) -> handler(request, match) -> (status, JSON body)
Handler = Callable[["Request", re.Match], tuple[int, Any]]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # JSON, or {field: bytes} for multipart/form-data (pipeline uploads), or None
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                for part in message.iter_parts()}
    return json.loads(raw)


@dataclass
class ApiServer:
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes[(method, pattern)] = handler

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if method is None or r.method == method]

    def handle(self, method: str, raw_path: str, raw_body: bytes, headers: dict[str, str] | None = None
               ) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        request = Request(method, parts.path, parse_qs(parts.query),
                          _parse_body(raw_body, headers.get("content-type", "")), headers)
        self.requests.append(request)
        for (m, pattern), handler in self.routes.items():
            match = re.fullmatch(pattern, parts.path)
            if m == method and match:
                return handler(request, match)
        return 404, {"code": 5, "message": f"no route for {method} {parts.path}"}


def serve(server: ApiServer) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Starts `server` on 127.0.0.1 (a free port) in a thread; sets `server.url`."""

    class _Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = server.handle(self.command, self.path, self.rfile.read(length), dict(self.headers))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _answer

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread


class ApiError(Exception):
    """A refusal, answered as grpc-gateway does: HTTP status and {"code": <gRPC code>, "message": ...}."""

    _GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6}

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def answer(self) -> tuple[int, dict]:
        return self.status, {"code": self._GRPC_CODES[self.status], "message": self.message}


@dataclass
class MultiUser:
    """KFP 2.5 with MULTIUSER=true, as kubeflow/pipelines tag 2.5.0 (d07cf1c7) answers, behind Kubeflow's gateway.

    Identity (backend/src/apiserver/auth/*.go): an `Authorization: Bearer <token>` header, checked by a
    TokenReview (here `tokens`: token -> user), or the `kubeflow-userid` header the Kubeflow gateway sets
    once oauth2-proxy/Dex accepted the session cookie (here `cookies`: "name=value" -> user). Neither: 401.
    Namespaces (server/{experiment,run,job}_server.go): experiments, runs and recurring runs need one, runs
    and recurring runs take their experiment's, and an empty one is a 400 before any identity is looked
    at; a pipeline without one is shared and needs no identity (server/pipeline_server.go,
    canAccessPipeline). Authorization (resource_manager.go, IsAuthorized): a SubjectAccessReview, here
    `profiles`: namespace -> users who may use it (403 otherwise).
    """

    tokens: dict[str, str]
    profiles: dict[str, set[str]]
    cookies: dict[str, str] = field(default_factory=dict)

    def identity(self, request: Request) -> str:
        for pair in request.headers.get("cookie", "").split(";"):
            if pair.strip() in self.cookies:
                return self.cookies[pair.strip()]
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "Failed to check authorization. User identity is empty in the request header: "
                                "Request header error: there is no user identity header.")
        if not header.startswith("Bearer "):
            raise ApiError(400, "Header 'Authorization' is incorrectly formatted. Expected prefix 'Bearer '")
        if header[len("Bearer "):] not in self.tokens:
            raise ApiError(401, "Failed to check authorization. User identity is empty in the request header: "
                                "Authentication failure: Review.Status.Authenticated is false")
        return self.tokens[header[len("Bearer "):]]

    def authorize(self, request: Request, namespace: str, empty: str) -> None:
        """Raises ApiError unless `namespace` is set and the request's user may use it; `empty` is the 400's text."""
        if not namespace:
            raise ApiError(400, empty)
        user = self.identity(request)
        if user not in self.profiles.get(namespace, ()):
            raise ApiError(403, f"User '{user}' is not authorized with reason: no RoleBinding in namespace "
                                f"{namespace} (request: namespace {namespace})")


_EXPERIMENT_NS = "An experiment cannot have an empty namespace in multi-user mode"
_RUN_NS = "A run cannot have an empty namespace in multi-user mode"
_RECURRING_NS = "Recurring run cannot have an empty namespace in multi-user mode"


def _display_name_filter(request: Request) -> str | None:
    raw = request.query.get("filter", [""])[0]
    if not raw:
        return None
    (predicate,) = json.loads(raw)["predicates"]
    # kfp.Client writes the operation as its enum number (1), radflow as its name; both mean EQUALS.
    if predicate["operation"] not in ("EQUALS", 1) or predicate["key"] != "display_name":
        raise ApiError(400, f"this test server filters on display_name EQUALS only, not {predicate}")
    return predicate["stringValue"]


class KfpApi:
    """The KFP v2beta1 REST paths kfp.Client uses, keeping what it creates; runs can walk through scripted states.

    Single-user by default; with `multi_user` every path checks namespace, identity and access as KFP 2.5 does.
    """

    def __init__(self, run_states: list[dict] = (), experiments: list[dict] = (), recurring: list[dict] = (),
                 runs: list[dict] = (), multi_user: MultiUser | None = None):
        self.run_states = list(run_states)
        self.experiments, self.recurring, self.runs = list(experiments), list(recurring), list(runs)
        self.pipelines: list[dict] = []
        self.versions: list[dict] = []
        self.multi_user = multi_user
        self.server = ApiServer()
        s, base = self.server, "/apis/v2beta1"
        routes = [
            ("GET", "/healthz", lambda r, m: (200, {"multi_user": self.multi_user is not None})),
            ("GET", "/experiments", self.list_experiments),
            ("POST", "/experiments", self.create_experiment),
            ("POST", "/runs", self.create_run),
            ("GET", "/runs", self.list_runs),
            ("GET", r"/runs/([\w-]+)", self.get_run),
            ("POST", r"/runs/([\w-]+):terminate", self.terminate_run),
            ("POST", "/recurringruns", self.create_recurring),
            ("GET", "/recurringruns", self.list_recurring),
            ("DELETE", r"/recurringruns/([\w-]+)", self.delete_recurring),
            ("GET", "/pipelines", self.list_pipelines),
            ("POST", "/pipelines", self.create_pipeline),
            ("GET", r"/pipelines/([\w-]+)/versions", self.list_versions),
            ("POST", "/pipelines/upload_version", self.upload_version),
        ]
        for method, path, handler in routes:
            s.route(method, base + path, self._answering(handler))

    @staticmethod
    def _answering(handler: Handler) -> Handler:
        def answer(request, match):
            try:
                return handler(request, match)
            except ApiError as err:
                return err.answer()
        return answer

    def _authorize(self, request: Request, namespace: str, empty: str) -> None:
        if self.multi_user is not None:
            self.multi_user.authorize(request, namespace, empty)

    def _experiment(self, experiment_id: str) -> dict:
        found = [e for e in self.experiments if e["experiment_id"] == experiment_id]
        if not found:
            raise ApiError(404, f"Experiment {experiment_id} not found")
        return found[0]

    def _run(self, run_id: str) -> dict | None:
        return next((r for r in self.runs if r["run_id"] == run_id), None)

    def list_experiments(self, request, _):
        namespace = request.query.get("namespace", [""])[0]
        self._authorize(request, namespace, _EXPERIMENT_NS)
        wanted = _display_name_filter(request)
        return 200, {"experiments": [e for e in self.experiments if wanted in (None, e["display_name"])
                                     and (self.multi_user is None or e.get("namespace") == namespace)]}

    def create_experiment(self, request, _):
        self._authorize(request, request.body.get("namespace", ""), _EXPERIMENT_NS)
        experiment = {**request.body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
        self.experiments.append(experiment)
        return 200, experiment

    def create_run(self, request, _):
        namespace = ""
        if self.multi_user is not None:
            if not request.body.get("experiment_id"):
                raise ApiError(400, "Experiment id can not be empty in multi-user mode")
            namespace = self._experiment(request.body["experiment_id"]).get("namespace", "")
            self.multi_user.authorize(request, namespace, _RUN_NS)
        reference = request.body.get("pipeline_version_reference")
        if reference and not any(v["pipeline_version_id"] == reference["pipeline_version_id"] for v in self.versions):
            raise ApiError(404, f"Pipeline version {reference['pipeline_version_id']} not found")
        run = {**request.body, "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING", "namespace": namespace}
        self.runs.append(run)
        return 200, run

    def list_runs(self, request, _):
        namespace = request.query.get("namespace", [""])[0]
        experiment_id = request.query.get("experiment_id", [""])[0]
        if experiment_id:
            namespace = self._experiment(experiment_id).get("namespace", "")
        self._authorize(request, namespace, _RUN_NS)
        found = [r for r in self.runs if (not experiment_id or r.get("experiment_id") == experiment_id)
                 and (self.multi_user is None or r.get("namespace") == namespace)]
        return 200, {"runs": found, "total_size": len(found)}

    def get_run(self, request, match):
        stored = self._run(match.group(1))
        if self.multi_user is not None:
            if stored is None:
                raise ApiError(404, f"Run {match.group(1)} not found")
            self.multi_user.authorize(request, stored["namespace"], _RUN_NS)
        if self.run_states:
            state = self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0]
            return 200, {**(stored or {}), "run_id": match.group(1), **state}
        if stored is None:
            raise ApiError(404, f"Run {match.group(1)} not found")
        return 200, stored

    def terminate_run(self, request, match):
        stored = self._run(match.group(1))
        if stored is None:
            raise ApiError(404, f"Run {match.group(1)} not found")
        self._authorize(request, stored.get("namespace", ""), _RUN_NS)
        stored["state"] = "CANCELING"
        return 200, {}

    def create_recurring(self, request, _):
        namespace = ""
        if self.multi_user is not None:
            namespace = self._experiment(request.body.get("experiment_id", "")).get("namespace", "")
            self.multi_user.authorize(request, namespace, _RECURRING_NS)
        created = {**request.body, "recurring_run_id": f"rr-{len(self.recurring) + 100}", "status": "ENABLED",
                   "namespace": namespace}
        self.recurring.append(created)
        return 200, created

    def list_recurring(self, request, _):
        namespace = request.query.get("namespace", [""])[0]
        self._authorize(request, namespace, "a recurring run cannot have an empty namespace in multi-user mode")
        wanted = _display_name_filter(request)
        found = [r for r in self.recurring if wanted in (None, r["display_name"])
                 and (self.multi_user is None or r.get("namespace") == namespace)]
        return 200, {"recurringRuns": found, "total_size": len(found)}

    def delete_recurring(self, request, match):
        found = [r for r in self.recurring if r["recurring_run_id"] == match.group(1)]
        if not found:
            raise ApiError(404, f"Recurring run {match.group(1)} not found")
        self._authorize(request, found[0].get("namespace", ""), _RECURRING_NS)
        self.recurring = [r for r in self.recurring if r["recurring_run_id"] != match.group(1)]
        return 200, {}

    def _pipeline_access(self, request, namespace: str) -> None:
        if namespace:  # a shared pipeline (no namespace) needs no identity
            self._authorize(request, namespace, "")

    def list_pipelines(self, request, _):
        namespace = request.query.get("namespace", [""])[0]
        self._pipeline_access(request, namespace)
        wanted = _display_name_filter(request)
        found = [p for p in self.pipelines if wanted in (None, p["display_name"])
                 and p.get("namespace", "") == (namespace if self.multi_user is not None else p.get("namespace", ""))]
        return 200, {"pipelines": found, "total_size": len(found)}

    def create_pipeline(self, request, _):
        namespace = request.body.get("namespace", "") if self.multi_user is not None else ""
        self._pipeline_access(request, namespace)
        if any(p["display_name"] == request.body["display_name"] and p["namespace"] == namespace
               for p in self.pipelines):
            raise ApiError(409, f"Failed to create a new pipeline. The name {request.body['display_name']} already "
                                f"exists. Please specify a new name")
        pipeline = {**request.body, "namespace": namespace, "pipeline_id": f"p-{len(self.pipelines) + 1}"}
        self.pipelines.append(pipeline)
        return 200, pipeline

    def _pipeline(self, pipeline_id: str) -> dict:
        found = [p for p in self.pipelines if p["pipeline_id"] == pipeline_id]
        if not found:
            raise ApiError(404, f"Pipeline {pipeline_id} not found")
        return found[0]

    def list_versions(self, request, match):
        self._pipeline_access(request, self._pipeline(match.group(1))["namespace"])
        wanted = _display_name_filter(request)
        found = [v for v in self.versions if v["pipeline_id"] == match.group(1)
                 and wanted in (None, v["display_name"])]
        return 200, {"pipeline_versions": found, "total_size": len(found)}

    def upload_version(self, request, _):
        pipeline = self._pipeline(request.query["pipelineid"][0])
        try:
            self._pipeline_access(request, pipeline["namespace"])
        except ApiError as err:  # the upload handler answers every refusal with 400 (pipeline_upload_server.go)
            raise ApiError(400, f"Failed to create a pipeline version due to authorization error: {err}") from err
        import yaml

        documents = list(yaml.safe_load_all(request.body["uploadfile"]))
        if "pipelineInfo" not in documents[0]:
            raise ApiError(400, "Failed to create a pipeline version: not a pipeline spec")
        name = request.query["name"][0]
        if any(v["pipeline_id"] == pipeline["pipeline_id"] and v["display_name"] == name for v in self.versions):
            raise ApiError(409, f"Failed to create a pipeline version: {name} already exists")
        version = {"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": f"pv-{len(self.versions) + 1}",
                   "display_name": name, "description": request.query.get("description", [""])[0],
                   "pipeline_spec": documents[0]}
        self.versions.append(version)
        return 200, version

    def __enter__(self) -> KfpApi:
        self.httpd, _ = serve(self.server)
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()


class FakeClock:
    """A monotonic clock and sleep for waiters under test: sleeping advances time instantly."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s
