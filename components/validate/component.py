"""KFP wrapper of validate: maps artifacts to `radflow.components.validate.validate.validate` arguments."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output


def validate(examples: Input[Dataset], config: dict, statistics: Output[Artifact], report: Output[Markdown]):
    """TFDV statistics, schema and anomalies per split; fails the run on anomalies.

    Args:
        examples: an ingest output.
        config: ValidateConfig fields.
        statistics: statistics per split, the schema, anomalies.md and validation.json.
        report: the anomalies report, rendered by the KFP UI.
    """
    import shutil

    from radflow.components.validate.validate import REPORT_FILE, ValidateConfig
    from radflow.components.validate.validate import validate as run_validate
    from radflow.pipeline.config import from_dict

    try:
        result = run_validate(examples.path, statistics.path, from_dict(ValidateConfig, config))
    finally:  # the report is most useful exactly when validation fails
        shutil.copyfile(f"{statistics.path}/{REPORT_FILE}", report.path)
    statistics.metadata.update({"passed": result.passed, "num_examples": result.num_examples})
