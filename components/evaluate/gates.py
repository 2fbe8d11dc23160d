"""The gates a model must pass to be blessed, and the blessing that says so in words a reviewer can sign.

Every gate bounds a test metric from below: ROC AUC, sensitivity and specificity at the operating
point, and the lower end of each one's patient-bootstrap interval. A binary model is gated on its
positive class; a model of more than two classes on every class's own sensitivity and
specificity (one vs rest), so the weakest class decides and a missed class cannot hide behind a
macro average. Against a production model, each gated metric's paired bootstrap interval of the
difference (candidate minus production, on the same test images) must stay above
`-max_regression`: a non-inferiority test, not a comparison of two point estimates.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from radflow.components.evaluate.config import EvaluateConfig

ARGMAX, THRESHOLD_DECISION = "argmax", "threshold"


@dataclass(frozen=True)
class Blessing:
    """The gate's decision, with every gate's value, bound and outcome, and why in one paragraph.

    Args:
        blessed: push may publish the model.
        reason: one paragraph a reviewer can read.
        gates: gate name -> {"value", "bound", "passed"} (a comparison gate also has "production"
            and "difference_ci_lower").
        baseline_version: the production version the model was judged against; None when there
            was none. Push refuses when production has moved since (see push.on_stale_blessing).
        model_root: where production was looked for (<serving_root>/<model_name>); "" for none.
        decision: "threshold" (binary: positive when its score reaches the threshold) or
            "argmax" (the highest-scoring class).
        limitations: what a reader of the metrics must know about the data and the operating point.
    """

    blessed: bool
    reason: str
    gates: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    baseline_version: int | None = None
    model_root: str = ""
    decision: str = THRESHOLD_DECISION
    limitations: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Blessing:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Evidence:
    """A model's test results at its operating point: what the gates read.

    Args:
        metrics: metrics.compute_metrics, plus num_examples and num_patients.
        rates: metrics.class_rates ("recall/<c>", "specificity/<c>").
        intervals: bootstrap intervals of both.
        label_names: class names, in score order.
        threshold: the operating threshold (binary); None for argmax models.
    """

    metrics: dict[str, float]
    rates: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    label_names: list[str]
    threshold: float | None


@dataclass(frozen=True)
class Baseline:
    """The production model on the candidate's test images, at its own served threshold.

    Args:
        version: its version number.
        metrics, rates: its metrics and class rates on those images.
        threshold: the threshold it serves (binary), else None.
        differences: paired bootstrap intervals of candidate minus production, per metric.
    """

    version: int
    metrics: dict[str, float]
    rates: dict[str, float]
    threshold: float | None
    differences: dict[str, tuple[float, float]] = field(default_factory=dict)


def gate_specs(label_names: list[str], config: EvaluateConfig) -> list[tuple[str, str, float, bool]]:
    """(gate name, metric key, bound, on the CI's lower end) for every enabled gate of this model."""
    specs = [("roc_auc", "roc_auc", config.min_roc_auc, False),
             ("roc_auc_ci_lower", "roc_auc", config.min_roc_auc_ci_lower, True)]
    if len(label_names) == 2:
        keyed = [("sensitivity", "recall"), ("specificity", "specificity")]
    else:
        keyed = [(f"{rate}[{name}]", f"{key}/{c}") for rate, key in (("sensitivity", "recall"),
                                                                     ("specificity", "specificity"))
                 for c, name in enumerate(label_names)]
    for gate, key in keyed:
        rate = gate.split("[")[0]
        specs.append((gate, key, getattr(config, f"min_{rate}"), False))
        specs.append((f"{gate}_ci_lower", key, getattr(config, f"min_{rate}_ci_lower"), True))
    return [s for s in specs if s[2]]


def _value(evidence: Evidence | Baseline, key: str) -> float:
    return {**evidence.metrics, **evidence.rates}[key]


def decide_blessing(
    evidence: Evidence,
    config: EvaluateConfig,
    baseline: Baseline | None = None,
    model_root: str = "",
    limitations: list[str] = (),
    operating_point: str = "",
) -> Blessing:
    """Blesses only when at least one gate is configured and every gate passes.

    Args:
        evidence: the candidate's test results.
        config: the bounds and the non-inferiority margin.
        baseline: production on the same images; None when there is none.
        model_root: where production was looked for, recorded with the blessing.
        limitations: sentences on the data and the operating point, stated in the reason.
        operating_point: one sentence on how the threshold was chosen and how certain it is.

    Returns:
        The blessing, each gate with value, bound and outcome, and a one-paragraph reason.
    """
    decision = THRESHOLD_DECISION if len(evidence.label_names) == 2 else ARGMAX
    gates: dict[str, dict[str, float | bool]] = {}
    for gate, key, bound, ci_lower in gate_specs(evidence.label_names, config):
        value = evidence.intervals[key][0] if ci_lower else _value(evidence, key)
        gates[gate] = {"value": value, "bound": bound, "passed": bool(np.isfinite(value) and value >= bound)}
    common = {"baseline_version": baseline.version if baseline else None, "model_root": model_root,
              "decision": decision, "limitations": list(limitations)}
    if not gates:
        return Blessing(False, "Not blessed: no evaluation gate is configured (min_roc_auc, min_sensitivity, "
                        "min_specificity and their _ci_lower bounds are all 0), and a model is never blessed "
                        "without one.", gates, **common)
    absolute = dict(gates)
    if baseline is not None:
        for gate, key, _, ci_lower in gate_specs(evidence.label_names, config):
            if not ci_lower:
                low = baseline.differences[key][0]
                gates[f"{gate}_vs_production"] = {
                    "value": _value(evidence, key) - _value(baseline, key), "difference_ci_lower": low,
                    "bound": -config.max_regression, "production": _value(baseline, key),
                    "passed": bool(np.isfinite(low) and low >= -config.max_regression)}
    failed = [n for n, g in gates.items() if not g["passed"]]
    verdict = "Blessed" if not failed else f"Not blessed: failed {', '.join(failed)}"
    parts = [f"{verdict}.", _summary(evidence, config), operating_point,
             "Gates: " + "; ".join(f"{n} {g['value']:.4f} {'>=' if g['passed'] else '<'} {g['bound']:.4f}"
                                   for n, g in absolute.items()) + ".",
             _compared(gates, baseline, model_root, config)]
    if limitations:
        parts.append("Limitations: " + " ".join(limitations))
    return Blessing(not failed, " ".join(p for p in parts if p), gates, **common)


def _ci(evidence: Evidence, key: str, level: float) -> str:
    lo, hi = evidence.intervals[key]
    return f"{_value(evidence, key):.3f} ({level:.0%} CI {lo:.3f}-{hi:.3f})"


def _summary(evidence: Evidence, config: EvaluateConfig) -> str:
    """The headline in words: images and patients, ROC AUC, and how the model decides."""
    m, level = evidence.metrics, config.ci_level
    head = (f"On {int(m['num_examples'])} test images from {int(m['num_patients'])} patients the model reaches "
            f"ROC AUC {_ci(evidence, 'roc_auc', level)}")
    if evidence.threshold is not None:
        return (f"{head}, sensitivity {_ci(evidence, 'recall', level)} and specificity "
                f"{_ci(evidence, 'specificity', level)} at its operating threshold {evidence.threshold:.3f} on "
                f"P({evidence.label_names[1]}).")
    per_class = ", ".join(f"{name} {_ci(evidence, f'recall/{c}', level)}"
                          for c, name in enumerate(evidence.label_names))
    weakest = min(range(len(evidence.label_names)), key=lambda c: evidence.rates[f"recall/{c}"])
    return (f"{head} (macro, one vs rest). It decides by the highest score (argmax), not by a threshold. "
            f"Sensitivity per class: {per_class}; the weakest is {evidence.label_names[weakest]}.")


def _compared(gates: dict, baseline: Baseline | None, model_root: str, config: EvaluateConfig) -> str:
    if baseline is None:
        where = f" under {model_root}" if model_root else ""
        return (f"There was no production model{where} when it was judged, so it is judged on the absolute "
                "gates alone.")
    worse = [f"{n.removesuffix('_vs_production')} {g['value']:+.4f} (CI lower {g['difference_ci_lower']:+.4f})"
             for n, g in gates.items() if n.endswith("_vs_production") and not g["passed"]]
    head = f"Judged against production version {baseline.version} of {model_root} on the same images: "
    if worse:
        return head + (f"it may be worse by more than the {config.max_regression} margin: {'; '.join(worse)} "
                       "(candidate minus production, paired patient bootstrap).")
    return head + (f"for every gated metric the paired patient-bootstrap CI of candidate minus production stays "
                   f"above -{config.max_regression}.")
