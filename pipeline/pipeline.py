"""The radflow DAG: ingest -> validate -> validation_gate -> class_balance -> train -> evaluate -> push.

Every step is a Python component whose body only maps artifacts to a stage function, run in
the project's own image (`PipelineConfig.image` under `cluster.registry`, built by `make image`) with nothing installed
at run time. Stage options travel as one dict parameter per stage, so the KFP UI shows each
stage's config as editable JSON and the defaults come from the typed dataclasses.

    radflow compile --out radflow.yaml
"""

# No `from __future__ import annotations` here: KFP reads the pipeline signature's real types.
from collections.abc import Callable
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset

from radflow.components.class_balance import component as class_balance_component
from radflow.components.evaluate import component as evaluate_component
from radflow.components.ingest import component as ingest_component
from radflow.components.push import component as push_component
from radflow.components.train import component as train_component
from radflow.components.validate import component as validate_component
from radflow.pipeline import tfjob as tfjob_component
from radflow.pipeline.cluster import FOLD_TASK_PREFIX, apply_cluster_settings, container_image
from radflow.pipeline.config import PipelineConfig, to_dict

PIPELINE_NAME = "radflow"
STAGES = ("ingest", "validate", "class_balance", "train", "evaluate", "push")
_FUNCTIONS = {
    "ingest": ingest_component.ingest,
    "validate": validate_component.validate,
    "class_balance": class_balance_component.class_balance,
    "train": train_component.train,
    "evaluate": evaluate_component.evaluate,
    "push": push_component.push,
}


class Outputs(NamedTuple):
    """What a run hands back: the examples, the evaluation (with the blessing) and the push record."""

    examples: Dataset
    evaluation: Artifact
    pushed: Artifact


def build_components(image: str) -> dict[str, Callable]:
    """The six stage components, all running in `image`.

    install_kfp_package=False: the image already has the pinned kfp, and installing at run
    time would be slow, unreproducible and impossible on offline clusters.
    """
    return {name: dsl.component(_FUNCTIONS[name], base_image=image, install_kfp_package=False) for name in STAGES}


def build_pipeline(config: PipelineConfig = PipelineConfig()) -> Callable:
    """The pipeline function, with `config` as its parameters' defaults.

    Args:
        config: data location, serving root, container image and every stage's options.

    Returns:
        A @dsl.pipeline function: compile it, submit it, or call it under kfp.local.
    """
    image = container_image(config.image, config.cluster.registry)
    c = build_components(image)
    c["validation_gate"] = dsl.component(validate_component.validation_gate, base_image=image,
                                         install_kfp_package=False)
    # Multi-node training: the train task launches a TFJob instead of training in its own pod.
    multi_node = config.cluster.train_workers > 1
    train_extra = {"cluster": to_dict(config.cluster), "image": image} if multi_node else {}
    if multi_node:
        c["train"] = dsl.component(tfjob_component.train, base_image=image, install_kfp_package=False)
    # With a multi-node TFJob the folds run inside the job's workers, one after another.
    fan_out_folds = config.train.cv_folds >= 2 and not multi_node
    for name in ("train_fold", "merge_folds", "train_after_folds"):
        c[name] = dsl.component(getattr(train_component, name), base_image=image, install_kfp_package=False)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Labelled medical images -> validated, balanced, trained, gated model pushed to TF Serving.",
    )
    def radflow(
        data: str = config.data,
        serving_root: str = config.serving_root,
        ingest_config: dict = to_dict(config.ingest),
        validate_config: dict = to_dict(config.validate),
        class_balance_config: dict = to_dict(config.class_balance),
        train_config: dict = to_dict(config.train),
        evaluate_config: dict = to_dict(config.evaluate),
        push_config: dict = to_dict(config.push),
    ) -> Outputs:
        ingest = c["ingest"](source=data, config=ingest_config)
        examples = ingest.outputs["examples"]
        validate = c["validate"](examples=examples, config=validate_config, serving_root=serving_root,
                                 push_config=push_config)
        # Validate always completes, so its reports are published; the gate then stops the run on its verdict.
        gate = c["validation_gate"](statistics=validate.outputs["statistics"], config=validate_config)
        balance = c["class_balance"](examples=examples, config=class_balance_config).after(gate)
        class_balance = balance.outputs["class_balance"]
        fold_tasks = {}
        if fan_out_folds:
            # Cross-validation folds as parallel tasks, met pairwise by merge_folds (no ParallelFor: kfp.local
            # cannot run it); the final fit then only summarises them. The fold count is fixed at compile time.
            folds = [c["train_fold"](examples=examples, class_balance=class_balance, config=train_config, fold=i)
                     .set_display_name(f"{FOLD_TASK_PREFIX}{i}") for i in range(config.train.cv_folds)]
            fold_tasks = {f"{FOLD_TASK_PREFIX}{i}": t for i, t in enumerate(folds)}
            merged = folds[0].outputs["fold_result"]
            for i, fold in enumerate(folds[1:], start=1):
                merge = c["merge_folds"](first=merged, second=fold.outputs["fold_result"])
                fold_tasks[f"merge_folds_{i}"] = merge.set_display_name(f"merge_folds_{i}")
                merged = merge.outputs["merged"]
            train = c["train_after_folds"](examples=examples, class_balance=class_balance, folds=merged,
                                           config=train_config)
        else:
            train = c["train"](examples=examples, class_balance=class_balance, config=train_config, **train_extra)
        evaluate = c["evaluate"](model=train.outputs["model"], examples=examples,
                                 statistics=validate.outputs["statistics"], config=evaluate_config,
                                 serving_root=serving_root, push_config=push_config)
        push = c["push"](model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
                         statistics=validate.outputs["statistics"], serving_root=serving_root, config=push_config,
                         run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        # New data can arrive under unchanged parameters: never answer ingest or train from cache.
        ingest.set_caching_options(False)
        train.set_caching_options(False)
        for task in fold_tasks.values():
            task.set_caching_options(False)
        apply_cluster_settings({"ingest": ingest, "validate": validate, "validation_gate": gate,
                                "class_balance": balance, "train": train, "evaluate": evaluate, "push": push,
                                **fold_tasks}, config.cluster, tfjob=multi_node)
        return Outputs(examples=examples, evaluation=evaluate.outputs["evaluation"], pushed=push.outputs["pushed"])

    return radflow
