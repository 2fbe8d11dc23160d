"""KFP wrapper of validate: maps artifacts to `radflow.components.validate.validate.validate` arguments."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


def validate(examples: Input[Dataset], config: dict, serving_root: str, push_config: dict,
             statistics: Output[Artifact], report: Output[Markdown], statistics_report: Output[HTML]):
    """TFDV statistics, schema, drift and skew per split; records the verdict, which validation_gate acts on.

    This task completes even when it finds anomalies, because a failed task publishes no artifacts
    on a KFP cluster (see gate.py): so its reports always reach the KFP UI.

    Args:
        examples: an ingest output.
        config: ValidateConfig fields.
        serving_root: where the last blessed (highest published) version keeps its train statistics.
        push_config: PushConfig fields; the model name locates that version under serving_root.
        statistics: statistics/<split>.pb (push keeps statistics/train.pb), the schema, the reports, validation.json.
        report: the verdict with every anomaly and drift figure, rendered by the KFP UI.
        statistics_report: per-feature histograms and summaries per split, rendered by the KFP UI.
    """
    import dataclasses
    import os
    import shutil

    from radflow.components.push.config import PushConfig
    from radflow.components.validate.validate import HTML_FILE, REPORT_FILE, ValidateConfig, last_blessed_statistics
    from radflow.components.validate.validate import validate as run_validate
    from radflow.pipeline.config import from_dict

    baseline = last_blessed_statistics(serving_root, from_dict(PushConfig, push_config).model_name)
    verdict_only = dataclasses.replace(from_dict(ValidateConfig, config), fail_on_anomalies=False)
    result = run_validate(examples.path, statistics.path, verdict_only, baseline=baseline)
    for name, artifact in ((REPORT_FILE, report), (HTML_FILE, statistics_report)):
        shutil.copyfile(os.path.join(statistics.path, name), artifact.path)
    statistics.metadata.update({"passed": result.passed, "anomalies": len(result.anomalies),
                                "num_examples": result.num_examples, "warnings": len(result.warnings),
                                "baseline": baseline})


def validation_gate(statistics: Input[Artifact], config: dict):
    """Fails the run when validate found anything blocking, naming every finding; validate's reports are published.

    Args:
        statistics: a validate output (its validation.json holds the verdict).
        config: ValidateConfig fields (fail_on_anomalies decides).
    """
    from radflow.components.validate.gate import gate
    from radflow.components.validate.validate import ValidateConfig
    from radflow.pipeline.config import from_dict

    gate(statistics.path, from_dict(ValidateConfig, config))
