"""KFP wrapper of push: maps artifacts to `radflow.components.push.push.push` arguments."""

from kfp.dsl import Artifact, Input, Model, Output


def push(model: Input[Model], evaluation: Input[Artifact], serving_root: str, config: dict, pushed: Output[Artifact]):
    """Publishes the model to <serving_root>/<model_name>/<version>/ if the evaluation blessed it.

    The gate lives here, not in a dsl.If, so that local (kfp.local) and cluster runs share one DAG.

    Args:
        model: a train output.
        evaluation: an evaluate output holding blessing.json.
        serving_root: local directory or gs:// prefix that TF Serving reads.
        config: PushConfig fields.
        pushed: push.json: pushed, reason, version and path.
    """
    from radflow.components.push.push import PushConfig
    from radflow.components.push.push import push as run_push
    from radflow.pipeline.config import from_dict

    result = run_push(model.path, evaluation.path, serving_root, from_dict(PushConfig, config))
    with open(pushed.path, "w") as f:
        f.write(result.to_json())
    pushed.metadata.update({"pushed": result.pushed, "version": result.version, "path": result.path,
                            "reason": result.reason})
