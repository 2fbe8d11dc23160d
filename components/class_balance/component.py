"""KFP wrapper of class_balance: maps artifacts to `class_balance.class_balance` arguments."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output


def class_balance(examples: Input[Dataset], config: dict, class_balance: Output[Artifact], metrics: Output[Metrics],
                  chart: Output[HTML]):
    """Class counts per split, weights, initial bias, strategy and a recommendation, for train.

    Args:
        examples: an ingest output.
        config: ClassBalanceConfig fields.
        class_balance: class_balance.json (read by train) and class_counts.png.
        metrics: counts per split, weights and imbalance ratio as KFP metrics.
        chart: the class-count chart with the recommendation, rendered by the KFP UI.
    """
    from radflow.components.class_balance.class_balance import CHART_FILE, ClassBalanceConfig
    from radflow.components.class_balance.class_balance import class_balance as run_class_balance
    from radflow.pipeline.config import from_dict
    from radflow.report import write_images_html

    balance = run_class_balance(examples.path, class_balance.path, from_dict(ClassBalanceConfig, config))
    metrics.log_metric("imbalance_ratio", balance.imbalance_ratio)
    for i, name in enumerate(balance.label_names):
        for split, counts in balance.counts.items():
            metrics.log_metric(f"{split}_count_{name}", counts[name])
        metrics.log_metric(f"class_weight_{name}", balance.class_weights[i])
        metrics.log_metric(f"sampling_weight_{name}", balance.sampling_weights[i])
    notes = (f"strategy: {balance.strategy}\ninitial bias: {balance.initial_bias}\n\n"
             f"recommendation: {balance.recommendation}")
    write_images_html(chart.path, "Class balance", [f"{class_balance.path}/{CHART_FILE}"], notes)
