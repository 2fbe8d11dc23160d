#!/usr/bin/env bash
# make kind-down: delete the kind cluster. data/kind (the sample and pushed models) is kept.
set -euo pipefail
CLUSTER=${CLUSTER:-radflow}
kind delete cluster --name "$CLUSTER"
