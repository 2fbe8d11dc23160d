"""KFP wrapper of validate: maps artifacts to `radflow.components.validate.validate.validate` arguments."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


def validate(examples: Input[Dataset], config: dict, serving_root: str, push_config: dict,
             statistics: Output[Artifact], report: Output[Markdown], statistics_report: Output[HTML]):
    """TFDV statistics, schema, drift and skew per split; fails the run on anomalies.

    Args:
        examples: an ingest output.
        config: ValidateConfig fields.
        serving_root: where the last blessed (highest published) version keeps its train statistics.
        push_config: PushConfig fields; the model name locates that version under serving_root.
        statistics: statistics/<split>.pb (push keeps statistics/train.pb), the schema, the reports, validation.json.
        report: the verdict with every anomaly and drift figure, rendered by the KFP UI.
        statistics_report: per-feature histograms and summaries per split, rendered by the KFP UI.
    """
    import os
    import shutil

    from radflow.components.push.config import PushConfig
    from radflow.components.validate.validate import HTML_FILE, REPORT_FILE, ValidateConfig, last_blessed_statistics
    from radflow.components.validate.validate import validate as run_validate
    from radflow.pipeline.config import from_dict

    baseline = last_blessed_statistics(serving_root, from_dict(PushConfig, push_config).model_name)
    try:
        result = run_validate(examples.path, statistics.path, from_dict(ValidateConfig, config), baseline=baseline)
    finally:  # the reports are most useful exactly when validation fails
        for name, artifact in ((REPORT_FILE, report), (HTML_FILE, statistics_report)):
            if os.path.exists(os.path.join(statistics.path, name)):
                shutil.copyfile(os.path.join(statistics.path, name), artifact.path)
    statistics.metadata.update({"passed": result.passed, "num_examples": result.num_examples,
                                "warnings": len(result.warnings), "baseline": baseline})
