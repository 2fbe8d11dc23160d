# radflow: `make run` and `make test` work on a fresh clone with Python 3.11 and make.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data/sample
SERVING_ROOT ?= models
CONFIG ?=
SAMPLE_N ?= 800
V ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# REGISTRY=europe-west4-docker.pkg.dev/PROJECT/radflow for a cluster that pulls (GKE); kind loads the local image.
REGISTRY ?=
IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/)radflow:$(VERSION)

.DEFAULT_GOAL := help
.PHONY: help setup run test lint docs compile sample image push-image clean kind-up kind-e2e kind-down chromium orthanc serve

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: DATA=$(DATA) SERVING_ROOT=$(SERVING_ROOT) CONFIG=$(CONFIG) SAMPLE_N=$(SAMPLE_N)"

# The stamp is rebuilt whenever pyproject.toml (the pinned dependency set) changes. pip's output
# goes to $(VENV)/pip.log; its last lines are shown when it fails.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"radflow needs Python 3.11, found {sys.version.split()[0]}"'
	@echo "setup: $(VENV) with the pinned dependencies (pip's log: $(VENV)/pip.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e ".[dev]"; } > $(VENV)/pip.log 2>&1 \
		|| { tail -n 25 $(VENV)/pip.log; echo "setup failed: see $(VENV)/pip.log" >&2; exit 1; }
	@touch $@

setup: $(VENV)/.installed ## create .venv with the pinned dependencies (once)

sample: setup ## write the synthetic sample dataset to data/sample (if missing)
	@[ -d data/sample/train ] || $(BIN)/radflow synth data/sample --n $(SAMPLE_N)

run: setup ## run the whole pipeline locally; DATA=path/to/images for your own, V=1 streams every task's output
	@if [ "$(DATA)" = "data/sample" ]; then $(MAKE) --no-print-directory sample; fi
	$(BIN)/radflow run --local --data "$(DATA)" --serving-root "$(SERVING_ROOT)" $(if $(CONFIG),--config "$(CONFIG)") $(if $(V),--verbose)

test: setup ## run the test suite
	$(BIN)/python -m pytest

chromium: ## install Debian's chromium for the review page's browser tests (as root; skipped if present)
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

orthanc: ## install Debian's Orthanc, its DICOMweb plugin and dcmtk for the PACS tests (as root; skipped if present)
	@(command -v Orthanc && command -v storescu && dpkg -s orthanc-dicomweb) >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y orthanc orthanc-dicomweb dcmtk)

lint: setup ## ruff
	$(BIN)/ruff check .

docs: setup ## regenerate docs/configuration.md from the config dataclasses
	$(BIN)/radflow config reference > docs/configuration.md

compile: setup ## compile the pipeline to radflow.yaml
	$(BIN)/radflow compile --out radflow.yaml $(if $(CONFIG),--config "$(CONFIG)")

serve: setup ## serve SERVING_ROOT/radflow with radflow serve (gRPC 127.0.0.1:8500, REST :8501) until Ctrl-C
	$(BIN)/radflow serve --model_name radflow --model_base_path "$(SERVING_ROOT)/radflow"

image: ## build the pipeline image [REGISTRY/]radflow:<version> (needs a Docker engine)
	docker build -t $(IMAGE) .

push-image: ## push the image to REGISTRY (set cluster.registry to the same in the pipeline config)
	@[ -n "$(REGISTRY)" ] || { echo "push-image: set REGISTRY, e.g. REGISTRY=europe-west4-docker.pkg.dev/PROJECT/radflow" >&2; exit 1; }
	docker push $(IMAGE)

kind-up: ## local cluster: kind + KFP standalone (pinned) + Training Operator + the image (after make image)
	IMAGE=$(IMAGE) infra/kind/up.sh

kind-e2e: setup ## on the kind cluster: run the pipeline, serve the pushed model, predict (tests/e2e)
	BIN=$(BIN) infra/kind/e2e.sh

kind-down: ## delete the kind cluster (data/kind is kept)
	infra/kind/down.sh

clean: ## remove run outputs (runs/, models/), keeping .venv and data/
	rm -rf runs models radflow.yaml
