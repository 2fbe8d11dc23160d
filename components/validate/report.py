"""The HTML statistics report: what a Facets Overview user expects, as one self-contained page.

TFDV's own Facets HTML loads its JavaScript from the web, so it is blank on an offline cluster
or a laptop on a plane. This page embeds everything: per feature, a summary table with a row
per split (and the last blessed run's train, when there is one) and a histogram PNG overlaying
them, plus the verdict, the anomalies, and every drift and skew figure. The KFP UI renders it
as an HTML artifact; a browser opens the file directly.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import numpy as np
from tensorflow_metadata.proto.v0 import statistics_pb2

from radflow import fileio
from radflow.components.validate import drift as dr

if TYPE_CHECKING:  # only for annotations: validate imports this module
    from radflow.components.validate.validate import ValidationResult

BASELINE = "last blessed train"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.bad{color:#b00020;font-weight:600}.warn{color:#a15c00}.ok{color:#1b7f3b}
.feature{display:flex;gap:1.5em;align-items:flex-start;border-top:1px solid #ddd;padding-top:.8em}
h3{margin:.2em 0}
"""


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode()


def _plot_feature(name: str, features: dict[str, statistics_pb2.FeatureNameStatistics]) -> str:
    """One PNG (base64) overlaying the datasets' distributions of one feature, each as shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.4))
    categorical = any(f.HasField("string_stats") for f in features.values())
    if categorical:
        shares = {label: dr.value_shares(f) for label, f in features.items()}
        values = sorted({v for s in shares.values() for v in s})[:20]
        width = 0.8 / max(len(shares), 1)
        for i, (label, share) in enumerate(shares.items()):
            ax.bar([j + i * width for j in range(len(values))], [share.get(v, 0.0) for v in values], width,
                   label=label)
        ax.set_xticks([j + width * (len(shares) - 1) / 2 for j in range(len(values))], values, fontsize=7,
                      rotation=20)
    else:
        for label, f in features.items():
            buckets = dr.standard_histogram(f)
            if not buckets:
                continue
            low, high, count = (np.array(x, float) for x in zip(*buckets, strict=True))
            share = count / (count.sum() or 1.0)
            if np.all(high > low):  # TFDV's equal-width buckets are contiguous: draw the outline
                ax.stairs(share, np.append(low, high[-1]), label=label, linewidth=1.6)
            else:  # all values equal: a point mass, drawn as a thin bar
                ax.bar(low, share, width=0.01 * np.maximum(np.abs(low), 1.0), alpha=0.5, label=label)
    ax.set_ylabel("share", fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _summary_table(features: dict[str, statistics_pb2.FeatureNameStatistics]) -> str:
    """Facets' summary columns: counts and missing, then the moments (numeric) or the values (categorical)."""
    categorical = any(f.HasField("string_stats") for f in features.values())
    if categorical:
        head = ["", "count", "missing", "unique", "top value", "top share"]
    else:
        head = ["", "count", "missing", "mean", "std dev", "zeros", "min", "median", "max"]
    rows = []
    for label, f in features.items():
        if categorical:
            common, shares = f.string_stats.common_stats, dr.value_shares(f)
            top = max(shares, key=shares.get) if shares else ""
            cells = [common.num_non_missing, common.num_missing, f.string_stats.unique, html.escape(top),
                     f"{shares.get(top, 0.0):.1%}"]
        else:
            n, common = f.num_stats, f.num_stats.common_stats
            total = common.num_non_missing or 1
            cells = [common.num_non_missing, common.num_missing, f"{n.mean:.4g}", f"{n.std_dev:.4g}",
                     f"{n.num_zeros / total:.1%}", f"{n.min:.4g}", f"{n.median:.4g}", f"{n.max:.4g}"]
        rows.append("<tr><td>" + html.escape(label) + "</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def statistics_html(
    stats: dict[str, statistics_pb2.DatasetFeatureStatisticsList],
    baseline: statistics_pb2.DatasetFeatureStatisticsList | None,
    result: ValidationResult,
    schema_source: str,
    min_examples: int,
) -> str:
    """The whole report page.

    Args:
        stats: split -> its statistics (empty splits absent).
        baseline: the last blessed run's train statistics, or None.
        result: the verdict, findings, patients and comparisons.
        schema_source: where the schema came from, in words.
        min_examples: comparisons with fewer examples on a side were not acted on (ValidateConfig.min_examples).

    Returns:
        A self-contained HTML document.
    """
    datasets = {split: s.datasets[0] for split, s in stats.items() if s.datasets}
    if baseline is not None and baseline.datasets:
        datasets[BASELINE] = baseline.datasets[0]
    per_feature: dict[str, dict[str, statistics_pb2.FeatureNameStatistics]] = {}
    for label, dataset in datasets.items():
        for f in dataset.features:
            per_feature.setdefault(".".join(f.path.step) or f.name, {})[label] = f

    status = ("<span class='ok'>passed</span>" if result.passed
              else f"<span class='bad'>FAILED ({len(result.anomalies)} anomalies)</span>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>radflow data validation</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Data validation: {status}</h1><p>Schema: {html.escape(schema_source)}</p>"]
    classes = sorted({c for per in result.patients.values() for c in per})
    parts.append("<table><tr><th>split</th><th>examples</th>"
                 + "".join(f"<th>patients {html.escape(c)}</th>" for c in classes) + "</tr>"
                 + "".join(f"<tr><td>{s}</td><td>{n}</td>"
                           + "".join(f"<td>{result.patients.get(s, {}).get(c, 0)}</td>" for c in classes) + "</tr>"
                           for s, n in result.num_examples.items()) + "</table>")
    for title, lines, css in (("Anomalies", result.anomalies, "bad"), ("Warnings", result.warnings, "warn")):
        items = "".join(f"<li class='{css}'>{html.escape(line)}</li>" for line in lines) or "<li>none</li>"
        parts.append(f"<h2>{title}</h2><ul>{items}</ul>")
    for comparison in result.comparisons:
        acted = comparison.num_examples >= min_examples
        rows = "".join(
            f"<tr><td>{html.escape(d.feature)}</td><td>{d.metric}</td><td>{d.value:.3f}</td><td>{d.threshold:g}</td>"
            f"<td class='{('bad' if acted else 'warn') if d.exceeded else 'ok'}'>"
            f"{('EXCEEDED' if acted else 'over, too few examples') if d.exceeded else 'ok'}</td>"
            f"<td>{html.escape(d.detail)}</td></tr>"
            for d in comparison.drifts
        )
        note = "" if acted else (f"<p class='warn'>Only {comparison.num_examples} examples on one side "
                                 f"(min_examples {min_examples}): reported, not acted on.</p>")
        parts.append(f"<h2>{comparison.kind.capitalize()}: {html.escape(comparison.name)}</h2>{note}<table><tr>"
                     f"<th>feature</th><th>metric</th><th>found</th><th>max</th><th></th><th>what moved</th></tr>"
                     f"{rows}</table>")
    parts.append("<h2>Features</h2>")
    for name in sorted(per_feature):
        features = per_feature[name]
        parts.append(f"<div class='feature'><div><h3>{html.escape(name)}</h3>{_summary_table(features)}</div>"
                     f"<img alt='{html.escape(name)} histogram' src='data:image/png;base64,"
                     f"{_plot_feature(name, features)}'></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_statistics_html(
    path: str,
    stats: dict[str, statistics_pb2.DatasetFeatureStatisticsList],
    baseline: statistics_pb2.DatasetFeatureStatisticsList | None,
    result: ValidationResult,
    schema_source: str,
    min_examples: int,
) -> None:
    """Writes `statistics_html` atomically to `path`."""
    fileio.write_text_atomic(path, statistics_html(stats, baseline, result, schema_source, min_examples))
