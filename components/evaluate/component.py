"""KFP wrapper of evaluate: maps artifacts to `radflow.components.evaluate.evaluate.evaluate` arguments."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate(model: Input[Model], examples: Input[Dataset], statistics: Input[Artifact], config: dict,
             serving_root: str, push_config: dict, evaluation: Output[Artifact], metrics: Output[Metrics],
             classification: Output[ClassificationMetrics], report: Output[HTML]):
    """Operating point off test, test metrics with patient-bootstrap CIs, comparison with production, blessing.

    Args:
        model: a train output.
        examples: the ingest output it was trained on.
        statistics: the validate output, whose shortcut findings the model card and blessing state.
        config: EvaluateConfig fields.
        serving_root: where the production model (the highest version) is found.
        push_config: PushConfig fields; the model name locates production under serving_root.
        evaluation: metrics.json, canary.json, plots, model_card.html and blessing.json (read by push).
        metrics: scalar metrics and their interval bounds for the KFP UI.
        classification: ROC curve and confusion matrix for the KFP UI.
        report: the model card, rendered by the KFP UI.
    """
    import math
    import shutil

    from radflow.components.evaluate.evaluate import EvaluateConfig
    from radflow.components.evaluate.evaluate import evaluate as run_evaluate
    from radflow.components.evaluate.model_card import MODEL_CARD_FILE
    from radflow.components.push.config import PushConfig
    from radflow.pipeline.config import from_dict

    result = run_evaluate(model.path, examples.path, evaluation.path, from_dict(EvaluateConfig, config),
                          serving_root=serving_root, model_name=from_dict(PushConfig, push_config).model_name,
                          validation_dir=statistics.path)
    scalars = dict(result.metrics)
    for name, (low, high) in result.intervals.items():
        scalars.update({f"{name}_ci_low": low, f"{name}_ci_high": high})
    for name, value in scalars.items():
        if math.isfinite(value):  # undefined metrics (e.g. NPV with no negatives) stay in metrics.json only
            metrics.log_metric(name, value)
    if result.threshold is not None:
        metrics.log_metric("threshold", result.threshold)
    metrics.log_metric("blessed", float(result.blessing.blessed))
    classification.log_confusion_matrix(result.label_names, result.confusion_matrix)
    if result.roc_curve:
        classification.log_roc_curve(result.roc_curve["fpr"], result.roc_curve["tpr"], result.roc_curve["thresholds"])
    evaluation.metadata.update({"blessed": result.blessing.blessed, "reason": result.blessing.reason,
                                "threshold": result.threshold})
    shutil.copyfile(f"{evaluation.path}/{MODEL_CARD_FILE}", report.path)
