"""Registering the compiled pipeline in KFP: a named pipeline with one version per release and spec.

    radflow upload --host http://localhost:8080 --config gke.yaml
    radflow submit --host http://localhost:8080 --pipeline-version 0.1.0-3f2a9c81d0e4

A version is named `<radflow version>-<first 12 hex of the compiled spec's SHA-256>`. The spec holds
the config's defaults, the cluster settings and the components' code, so one release compiled with
one config always maps to one version, and uploading it again changes nothing. Runs and recurring
runs that reference a version show it in the KFP UI beside the pipeline's other versions. In a
multi-user KFP the pipeline belongs to the profile namespace; with none it is shared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from radflow import __version__

DEFAULT_PIPELINE = "radflow"
_DIGEST_CHARS = 12


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str
    uploaded: bool  # False: it was there already


def version_name(package_path: str) -> str:
    """The version name the compiled spec at `package_path` registers under."""
    with open(package_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return f"{__version__}-{digest[:_DIGEST_CHARS]}"


def version_url(host: str, version: PipelineVersion) -> str:
    """The version's page in the KFP UI."""
    return f"{host.rstrip('/')}/#/pipelines/details/{version.pipeline_id}/version/{version.version_id}"


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def find_pipeline(client: Any, name: str, namespace: str) -> Any | None:
    """The pipeline called `name` in `namespace` ("" = shared), or None.

    Raises:
        ValueError: more than one has that name (KFP keeps names unique per namespace, so never expected).
    """
    found = [p for p in client.list_pipelines(filter=_name_filter(name), namespace=namespace or None).pipelines or ()
             if p.display_name == name]
    if len(found) > 1:
        raise ValueError(f"{len(found)} pipelines are named {name!r} in namespace {namespace!r}; delete all but one")
    return found[0] if found else None


def _find_version(client: Any, pipeline_id: str, name: str) -> Any | None:
    versions = client.list_pipeline_versions(pipeline_id, filter=_name_filter(name)).pipeline_versions or ()
    return next((v for v in versions if v.display_name == name), None)


def upload(client: Any, package_path: str, pipeline_name: str = DEFAULT_PIPELINE,
           namespace: str = "") -> PipelineVersion:
    """Registers the compiled spec as a version of `pipeline_name`, creating the pipeline if needed.

    Args:
        client: a kfp.Client.
        package_path: the compiled pipeline YAML.
        pipeline_name: the pipeline's display name.
        namespace: the Kubeflow profile that owns the pipeline; "" = shared (single-user KFP, or shared pipelines).

    Returns:
        The version, uploaded now or found already there.
    """
    import kfp_server_api

    name = version_name(package_path)
    pipeline = find_pipeline(client, pipeline_name, namespace)
    if pipeline is None:
        pipeline = client.pipelines.pipeline_service_create_pipeline(body=kfp_server_api.V2beta1Pipeline(
            display_name=pipeline_name, namespace=namespace or None,
            description="radflow: labelled medical images -> validated, balanced, trained, gated model on TF Serving"))
    existing = _find_version(client, pipeline.pipeline_id, name)
    if existing is not None:
        return PipelineVersion(pipeline.pipeline_id, existing.pipeline_version_id, name, uploaded=False)
    created = client.upload_pipeline_version(package_path, name, pipeline_id=pipeline.pipeline_id,
                                             description=f"radflow {__version__}, compiled spec {name}")
    return PipelineVersion(pipeline.pipeline_id, created.pipeline_version_id, name, uploaded=True)


def resolve(client: Any, pipeline_name: str, name: str, namespace: str = "") -> PipelineVersion:
    """The uploaded version `name` of `pipeline_name`, for runs and recurring runs to reference.

    Raises:
        ValueError: no such pipeline or version; the message names the versions there are.
    """
    pipeline = find_pipeline(client, pipeline_name, namespace)
    if pipeline is None:
        raise ValueError(f"no pipeline named {pipeline_name!r} in namespace {namespace!r}: run `radflow upload` first")
    found = _find_version(client, pipeline.pipeline_id, name)
    if found is None:
        page = client.list_pipeline_versions(pipeline.pipeline_id, page_size=20, sort_by="created_at desc")
        names = [v.display_name for v in page.pipeline_versions or ()]
        raise ValueError(f"pipeline {pipeline_name!r} has no version {name!r}; newest: {names or 'none'} "
                         "(`radflow upload` prints the name)")
    return PipelineVersion(pipeline.pipeline_id, found.pipeline_version_id, name, uploaded=False)
