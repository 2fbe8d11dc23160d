"""radflow compare: DeLong's test against hand values, the paired bootstrap, and two real models."""

import json
import math
import os

import numpy as np
import pytest

from radflow.cli import main
from radflow.components.evaluate import metrics as mx
from radflow.components.evaluate.compare import COMPARE_FILE, compare
from radflow.components.evaluate.config import EvaluateConfig
from radflow.components.evaluate.evaluate import evaluate
from radflow.components.push.push import push


def test_delong_matches_the_hand_computed_statistic():
    # Positives 0.9, 0.6, 0.2 (A) and 0.8, 0.7, 0.4 (B); negatives 0.7, 0.1 (A) and 0.5, 0.3 (B).
    # Placements: A V10 = [1, .5, .5], V01 = [1/3, 1]; B V10 = [1, 1, .5], V01 = [2/3, 1].
    # S10 = [[1/12, 1/24], [1/24, 1/12]], S01 = [[2/9, 1/9], [1/9, 1/18]];
    # var(A - B) = (1/12 + 1/12 - 1/12) / 3 + (2/9 + 1/18 - 2/9) / 2 = 1/36 + 1/36 = 1/18.
    y = np.array([1, 1, 1, 0, 0])
    t = mx.delong_test(y, np.array([0.9, 0.6, 0.2, 0.7, 0.1]), np.array([0.8, 0.7, 0.4, 0.5, 0.3]))
    assert t["auc_a"] == pytest.approx(2 / 3) and t["auc_b"] == pytest.approx(5 / 6)
    assert t["difference"] == pytest.approx(-1 / 6) and t["se"] == pytest.approx(math.sqrt(1 / 18))
    assert t["z"] == pytest.approx(-math.sqrt(18) / 6) and t["p_value"] == pytest.approx(math.erfc(0.5))


def _delong_by_definition(y, a, b):
    """DeLong et al. (1988) as written: the psi kernel over every positive-negative pair."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    s10 = np.cov(np.vstack([comps[0][0], comps[1][0]]))
    s01 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum()
    return comps[0][0].mean() - comps[1][0].mean(), math.sqrt(var)


def test_the_fast_delong_equals_the_definition_with_ties_and_the_paired_ci_covers_it():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    a = np.round(y * 0.8 + rng.normal(0, 0.6, 300), 1)  # rounded: many ties
    b = np.round(y * 0.5 + rng.normal(0, 0.6, 300), 1)
    t = mx.delong_test(y, a, b)
    diff, se = _delong_by_definition(y, a, b)
    assert t["difference"] == pytest.approx(diff) and t["se"] == pytest.approx(se)
    scores = lambda s: np.stack([1 - s, s], axis=1)  # noqa: E731 - ROC AUC only needs the order
    d = mx.paired_differences(y, (scores(a), 0.5), (scores(b), 0.5), np.arange(300).astype(str), 1000)
    lo, hi = d["roc_auc"]
    assert lo < t["difference"] < hi
    assert 0.7 < (hi - lo) / (2 * 1.96 * t["se"]) < 1.4  # the bootstrap and DeLong agree on the spread


def test_compare_two_real_models_prints_and_writes_the_paired_comparison(good_model_dir, separable_examples_dir,
                                                                        tmp_path, capsys):
    from test_evaluate import _worse_copy

    from radflow import examples as ex

    serving = str(tmp_path / "serving")
    evaluate(good_model_dir, separable_examples_dir, str(tmp_path / "eval"),
             EvaluateConfig(bootstrap_resamples=50, explain_images=0, error_analysis_images=0), serving_root=serving)
    assert push(good_model_dir, str(tmp_path / "eval"), serving).pushed
    worse = _worse_copy(good_model_dir, ex.read_metadata(separable_examples_dir), str(tmp_path / "worse"))
    result = compare(os.path.join(serving, "radflow", "1"), worse, separable_examples_dir, str(tmp_path / "cmp"),
                     EvaluateConfig(bootstrap_resamples=200))
    assert result["a"]["threshold_from"] == "the threshold the version serves"
    assert result["b"]["threshold_from"].startswith("none (not evaluated)")
    assert result["a"]["metrics"]["roc_auc"] > 0.9 and result["b"]["metrics"]["roc_auc"] == pytest.approx(0.5)
    assert result["difference"]["roc_auc"][0] > 0.3  # A is better, and the paired CI says so
    assert result["delong"]["p_value"] < 0.001 and result["delong"]["difference"] > 0.4
    assert "train.epochs" in result["config_differences"]  # the version records its training, the copy none
    assert json.load(open(tmp_path / "cmp" / COMPARE_FILE))["images"] == 48
    assert main(["compare", os.path.join(serving, "radflow", "1"), worse, "--examples", separable_examples_dir]) == 0
    out = capsys.readouterr().out
    assert "DeLong's test of the ROC AUCs" in out and "(excludes 0)" in out and "settings that differ:" in out
