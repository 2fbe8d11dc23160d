"""A loopback HTTP server that answers REST paths from a route table and records every request.

The Kubernetes and KFP clients then talk real HTTP to it, so tests see exactly what they send.
"""

from __future__ import annotations

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
    body: Any


@dataclass
class ApiServer:
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes[(method, pattern)] = handler

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if method is None or r.method == method]

    def handle(self, method: str, raw_path: str, raw_body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        body = json.loads(raw_body) if raw_body else None
        request = Request(method, parts.path, parse_qs(parts.query), body)
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
            status, payload = server.handle(self.command, self.path, self.rfile.read(length))
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


class KfpApi:
    """The KFP v2beta1 REST paths kfp.Client uses, with runs that walk through scripted states."""

    def __init__(self, run_states: list[dict] = (), experiments: list[dict] = (), recurring: list[dict] = ()):
        self.run_states = list(run_states)
        self.experiments, self.recurring = list(experiments), list(recurring)
        self.server = ApiServer()
        s, base = self.server, "/apis/v2beta1"
        s.route("GET", base + "/healthz", lambda r, m: (200, {"multi_user": False}))
        s.route("GET", base + "/experiments", self.list_experiments)
        s.route("POST", base + "/experiments", self.create_experiment)
        s.route("POST", base + "/runs", lambda r, m: (200, {**r.body, "run_id": "run-1", "state": "PENDING"}))
        s.route("GET", base + r"/runs/([\w-]+)", self.get_run)
        s.route("POST", base + "/recurringruns", self.create_recurring)
        s.route("GET", base + "/recurringruns", lambda r, m: (200, {"recurringRuns": self.recurring,
                                                                    "total_size": len(self.recurring)}))
        s.route("DELETE", base + r"/recurringruns/([\w-]+)", self.delete_recurring)

    def list_experiments(self, request, _):
        wanted = json.loads(request.query["filter"][0])["predicates"][0]["stringValue"]
        return 200, {"experiments": [e for e in self.experiments if e["display_name"] == wanted]}

    def create_experiment(self, request, _):
        experiment = {**request.body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
        self.experiments.append(experiment)
        return 200, experiment

    def get_run(self, request, match):
        state = self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0]
        return 200, {"run_id": match.group(1), **state}

    def create_recurring(self, request, _):
        created = {**request.body, "recurring_run_id": f"rr-{len(self.recurring) + 100}", "status": "ENABLED"}
        self.recurring.append(created)
        return 200, created

    def delete_recurring(self, request, match):
        self.recurring = [r for r in self.recurring if r["recurring_run_id"] != match.group(1)]
        return 200, {}

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
