"""Compiles the pipeline to KFP IR YAML: the build product a cluster runs. Never hand-edit it.

    radflow compile --out radflow.yaml
"""

from __future__ import annotations

from kfp import compiler

from radflow.pipeline.config import PipelineConfig
from radflow.pipeline.pipeline import build_pipeline


def compile_pipeline(config: PipelineConfig, out: str) -> str:
    """Writes the compiled pipeline to `out` and returns the path."""
    compiler.Compiler().compile(build_pipeline(config), package_path=out)
    return out
