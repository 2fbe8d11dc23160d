"""KFP wrapper of push: maps artifacts to `radflow.components.push.push.push` arguments."""

from kfp.dsl import Artifact, Input, Model, Output


def push(model: Input[Model], evaluation: Input[Artifact], statistics: Input[Artifact], serving_root: str,
         config: dict, run_id: str, pushed: Output[Artifact]):
    """Publishes the model to <serving_root>/<model_name>/<version>/ if blessed and infra-validated.

    The gate lives here, not in a dsl.If, so that local (kfp.local) and cluster runs share one DAG.

    Args:
        model: a train output.
        evaluation: an evaluate output: blessing.json, the threshold, canary requests.
        statistics: a validate output; its train statistics are kept with the version for drift checks.
        serving_root: local directory or gs:// prefix that TF Serving reads.
        config: PushConfig fields.
        run_id: the pipeline run, recorded in the version's lineage.
        pushed: push.json: pushed, reason, version, path, infra validation, removed versions.
    """
    from radflow.components.push.push import PushConfig
    from radflow.components.push.push import push as run_push
    from radflow.pipeline.config import from_dict

    result = run_push(model.path, evaluation.path, serving_root, from_dict(PushConfig, config),
                      statistics_dir=statistics.path, run_id=run_id)
    with open(pushed.path, "w") as f:
        f.write(result.to_json())
    pushed.metadata.update({"pushed": result.pushed, "version": result.version, "path": result.path,
                            "reason": result.reason})
