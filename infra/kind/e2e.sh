#!/usr/bin/env bash
# make kind-e2e: the whole pipeline on the kind cluster (make kind-up), then TF Serving in the
# cluster serving what it pushed. The assertions live in tests/e2e/test_kind.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
export RADFLOW_KIND_E2E=1  # tests/e2e skips without it: make test never drives a cluster
exec "$BIN/python" -m pytest tests/e2e -v -p no:cacheprovider "$@"
