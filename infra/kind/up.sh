#!/usr/bin/env bash
# make kind-up: a kind cluster with Kubeflow Pipelines standalone, the Training Operator, the
# pipeline's storage, and the radflow image loaded (build it first: make image).
#   Needs: docker (a running engine), kind, kubectl (with kustomize built in).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-radflow}
IMAGE=${IMAGE:?set IMAGE, e.g. radflow:0.1.0 (make kind-up sets it)}
# KFP standalone, pinned: backend 2.5.0 is the release that matches the kfp 2.13 SDK pinned in pyproject.toml.
PIPELINE_VERSION=${PIPELINE_VERSION:-2.5.0}
TRAINING_OPERATOR_VERSION=${TRAINING_OPERATOR_VERSION:-v1.8.1}  # TFJob, for cluster.train_workers > 1
DATA_DIR="$PWD/data/kind"

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is not installed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "kind-up: no Docker engine is running" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || { echo "kind-up: image $IMAGE not built; run make image" >&2; exit 1; }

mkdir -p "$DATA_DIR/models"
chmod -R a+rwX "$DATA_DIR"  # the steps run as the image's non-root user (uid 1000)
if ! kind get clusters | grep -qx "$CLUSTER"; then
  sed "s|RADFLOW_KIND_DATA|$DATA_DIR|" infra/kind/cluster.yaml > "$DATA_DIR/.cluster.yaml"
  kind create cluster --name "$CLUSTER" --config "$DATA_DIR/.cluster.yaml" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER"

echo "== Kubeflow Pipelines $PIPELINE_VERSION (standalone)"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$PIPELINE_VERSION"
kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$PIPELINE_VERSION"

echo "== Training Operator $TRAINING_OPERATOR_VERSION"
kubectl apply --server-side -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=$TRAINING_OPERATOR_VERSION"

echo "== storage and RBAC"
kubectl apply -f infra/kind/storage.yaml

echo "== image $IMAGE"
kind load docker-image "$IMAGE" --name "$CLUSTER"

echo "== waiting for KFP (first start pulls images: several minutes)"
kubectl -n kubeflow wait --for=condition=Available --timeout=900s deployment --all
# The UI service proxies the API too; NodePort 30080 is mapped to localhost:8080 by cluster.yaml.
kubectl -n kubeflow patch svc ml-pipeline-ui --type merge \
  -p '{"spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 3000, "nodePort": 30080}]}}'
echo "KFP is up: http://localhost:8080  (next: make kind-e2e)"
