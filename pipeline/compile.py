"""Compiles the pipeline to KFP IR YAML: the build product a cluster runs. Never hand-edit it.

    radflow compile --out radflow.yaml

KFP keeps dict parameters as protobuf Structs, whose numbers are all doubles, so kfp's own writer
shows `epochs: 30.0` in the spec and in the KFP UI's run parameters. Every stage option has a
declared type, so the file written here gives integer fields back their integers; the spec stays
one KFP parses (numbers are numbers to a Struct) and the components coerce either way.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.compiler import pipeline_spec_builder

from radflow.pipeline.capacity import check_capacity
from radflow.pipeline.config import ClusterConfig, PipelineConfig, from_dict, to_dict
from radflow.pipeline.pipeline import build_pipeline

log = logging.getLogger(__name__)

# Struct parameters by name: each stage's options, and the cluster settings a TFJob launcher gets as a constant.
_STRUCTS: dict[str, type] = {
    **{f"{f.name}_config": hint for f in dataclasses.fields(PipelineConfig)
       if dataclasses.is_dataclass(hint := typing.get_type_hints(PipelineConfig)[f.name])},
    "cluster": ClusterConfig,
}


def compile_pipeline(config: PipelineConfig, out: str) -> str:
    """Writes the compiled pipeline to `out` (YAML) and returns the path.

    The same documents, header comments and key order as kfp's compiler writes
    (kfp.compiler.pipeline_spec_builder.write_pipeline_spec_to_file), with integers restored.
    Parallel GPU demand beyond the configured pool is logged as a warning (pipeline/capacity.py).

    Raises:
        ValueError: a config error, e.g. a train pod or a TFJob the GPU pool can never hold.
    """
    for warning in check_capacity(config):
        log.warning("capacity: %s", warning)
    pipeline = build_pipeline(config)
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    restore_integers(spec)
    documents = [spec]
    if pipeline.platform_spec.platforms:
        documents.append(json_format.MessageToDict(pipeline.platform_spec))
    with open(out, "w") as f:
        f.write(pipeline_spec_builder.extract_comments_from_pipeline_spec(spec, pipeline.description))
        yaml.dump_all(documents, f, sort_keys=True)
    return out


def restore_integers(spec: dict[str, Any]) -> None:
    """Turns the doubles of integer-typed values in a PipelineSpec dict back into ints, in place.

    Covers the defaults of the pipeline's and every component's inputs, and the constants tasks
    pass: NUMBER_INTEGER parameters as a whole, and within the struct parameters in `_STRUCTS` the
    fields their dataclass declares as int.
    """
    components = {name: c.get("inputDefinitions", {}).get("parameters", {})
                  for name, c in spec.get("components", {}).items()}
    for inputs in (spec["root"].get("inputDefinitions", {}).get("parameters", {}), *components.values()):
        for name, definition in inputs.items():
            if "defaultValue" in definition:
                definition["defaultValue"] = _typed(name, definition, definition["defaultValue"])
    for dag in (spec["root"], *spec.get("components", {}).values()):
        for task in dag.get("dag", {}).get("tasks", {}).values():
            inputs = components.get(task["componentRef"]["name"], {})
            for name, argument in task.get("inputs", {}).get("parameters", {}).items():
                constant = argument.get("runtimeValue", {})
                if "constant" in constant and name in inputs:
                    constant["constant"] = _typed(name, inputs[name], constant["constant"])


def _typed(name: str, definition: dict[str, Any], value: Any) -> Any:
    if definition.get("parameterType") == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer():
        return int(value)
    if definition.get("parameterType") == "STRUCT" and name in _STRUCTS and isinstance(value, dict):
        return to_dict(from_dict(_STRUCTS[name], value))
    return value
