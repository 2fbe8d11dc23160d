"""KFP wrapper of evaluate: maps artifacts to `radflow.components.evaluate.evaluate.evaluate` arguments."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def evaluate(model: Input[Model], examples: Input[Dataset], config: dict, evaluation: Output[Artifact],
             metrics: Output[Metrics], classification: Output[ClassificationMetrics], report: Output[HTML]):
    """Test-split metrics of the exported model and the blessing that gates push.

    Args:
        model: a train output.
        examples: the ingest output it was trained on.
        config: EvaluateConfig fields.
        evaluation: metrics.json, plots and blessing.json (read by push).
        metrics: scalar metrics for the KFP UI.
        classification: ROC curve and confusion matrix for the KFP UI.
        report: ROC and confusion-matrix plots with the blessing, rendered by the KFP UI.
    """
    from radflow.components.evaluate.evaluate import CONFUSION_PLOT, ROC_PLOT, EvaluateConfig
    from radflow.components.evaluate.evaluate import evaluate as run_evaluate
    from radflow.pipeline.config import from_dict
    from radflow.report import write_images_html

    result = run_evaluate(model.path, examples.path, evaluation.path, from_dict(EvaluateConfig, config))
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    metrics.log_metric("blessed", float(result.blessing.blessed))
    classification.log_confusion_matrix(result.label_names, result.confusion_matrix)
    if result.roc_curve:
        classification.log_roc_curve(result.roc_curve["fpr"], result.roc_curve["tpr"], result.roc_curve["thresholds"])
    evaluation.metadata.update({"blessed": result.blessing.blessed, "reason": result.blessing.reason})
    plots = [f"{evaluation.path}/{ROC_PLOT}", f"{evaluation.path}/{CONFUSION_PLOT}"]
    write_images_html(report.path, "Evaluation", plots,
                      notes=f"blessed: {result.blessing.blessed}\n{result.blessing.reason}")
