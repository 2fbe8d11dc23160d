import math

import pytest

from radflow import examples as ex
from radflow.components.class_balance.class_balance import (
    ClassBalance,
    class_balance,
    class_weights,
    compute_class_balance,
    initial_bias,
    read_class_balance,
)
from radflow.components.class_balance.config import ClassBalanceConfig


def _metadata(train_counts, names):
    return ex.DatasetMetadata(tuple(names), 32, 1, {"train": dict(zip(names, train_counts, strict=True))})


def test_binary_weights_and_bias_match_hand_values():
    # 1341 NORMAL, 3875 PNEUMONIA: the Kaggle training split.
    assert class_weights([1341, 3875]) == pytest.approx([5216 / 2682, 5216 / 7750])
    assert initial_bias([1341, 3875]) == pytest.approx([math.log(3875 / 1341)])


def test_three_class_weights_and_log_priors():
    assert class_weights([100, 200, 700]) == pytest.approx([1000 / 300, 1000 / 600, 1000 / 2100])
    assert initial_bias([100, 200, 700]) == pytest.approx([math.log(0.1), math.log(0.2), math.log(0.7)])


def test_weighted_classes_carry_equal_total_weight():
    counts = [37, 113, 9]
    weights = class_weights(counts)
    totals = [w * n for w, n in zip(weights, counts, strict=True)]
    assert totals == pytest.approx([sum(counts) / 3] * 3)


def test_strategy_none_keeps_unit_weights_and_the_bias():
    balance = compute_class_balance(_metadata([100, 300], ["N", "P"]), ClassBalanceConfig(strategy="none"))
    assert balance.class_weights == {0: 1.0, 1: 1.0}
    assert balance.initial_bias == pytest.approx([math.log(3)])
    assert balance.imbalance_ratio == 3.0


def test_empty_class_and_unknown_strategy_are_refused():
    with pytest.raises(ValueError, match="no training examples"):
        compute_class_balance(_metadata([0, 10], ["N", "P"]), ClassBalanceConfig())
    with pytest.raises(ValueError, match="unknown class-balance strategy"):
        compute_class_balance(_metadata([5, 10], ["N", "P"]), ClassBalanceConfig(strategy="smote"))


def test_written_balance_round_trips_with_a_chart(examples_dir, tmp_path):
    written = class_balance(examples_dir, str(tmp_path))
    assert read_class_balance(str(tmp_path)) == written
    assert isinstance(written, ClassBalance) and written.class_weights[0] > written.class_weights[1]
    assert (tmp_path / "class_counts.png").stat().st_size > 1000
