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
    recommend,
    sampling_weights,
)
from radflow.components.class_balance.config import STRATEGIES, ClassBalanceConfig


def _metadata(train_counts, names, test_counts=None):
    counts = {"train": dict(zip(names, train_counts, strict=True))}
    if test_counts:
        counts["test"] = dict(zip(names, test_counts, strict=True))
    return ex.DatasetMetadata(tuple(names), 32, 1, counts)


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


def test_sampling_weights_balance_batches_only_when_oversampling():
    counts = [100, 300, 600]
    assert sampling_weights(counts, "oversample") == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert sampling_weights(counts, "class_weights") == pytest.approx([0.1, 0.3, 0.6])  # the data's own mix
    assert sampling_weights(counts, "none") == pytest.approx([0.1, 0.3, 0.6])
    # Drawing class c with probability 1/K, a batch of B holds B/K of each class in expectation, and each
    # minority image is repeated n_max / n_c times as often as a majority image.
    batch = 96
    expected = [batch * w for w in sampling_weights(counts, "oversample")]
    assert expected == pytest.approx([32, 32, 32])
    draws_per_image = [e / n for e, n in zip(expected, counts, strict=True)]
    assert [d / draws_per_image[2] for d in draws_per_image] == pytest.approx([6.0, 2.0, 1.0])


def test_oversample_keeps_unit_weights_and_biases_towards_the_balanced_batches():
    binary = compute_class_balance(_metadata([100, 300], ["N", "P"]), ClassBalanceConfig(strategy="oversample"))
    assert binary.class_weights == {0: 1.0, 1: 1.0}  # the sampling balances; weighting too would over-correct
    assert binary.sampling_weights == {0: 0.5, 1: 0.5}
    assert binary.initial_bias == pytest.approx([0.0])  # log(1/1): the batches are 50/50
    assert binary.imbalance_ratio == 3.0
    three = compute_class_balance(_metadata([100, 200, 700], ["a", "b", "c"]), ClassBalanceConfig("oversample"))
    assert three.initial_bias == pytest.approx([math.log(1 / 3)] * 3)
    weighted = compute_class_balance(_metadata([100, 200, 700], ["a", "b", "c"]), ClassBalanceConfig())
    assert weighted.class_weights == pytest.approx({0: 1000 / 300, 1: 1000 / 600, 2: 1000 / 2100})
    assert weighted.initial_bias == pytest.approx([math.log(0.1), math.log(0.2), math.log(0.7)])
    assert weighted.sampling_weights == pytest.approx({0: 0.1, 1: 0.2, 2: 0.7})


def test_recommendation_follows_the_imbalance():
    def advice(train, test=None):
        return recommend(["N", "P"], {"train": dict(zip("NP", train, strict=True)),
                                      "test": dict(zip("NP", test or train, strict=True))})

    assert advice([500, 600]).startswith("Classes are roughly balanced (1.20:1)")
    moderate = advice([1341, 3875])
    assert moderate.startswith("Moderate imbalance (2.89:1, minority 'N' with 1341): use 'class_weights'")
    assert "Only" not in moderate and "test split" not in moderate
    severe = advice([40, 4000])
    assert severe.startswith("Severe imbalance (100.00:1, minority 'N' with 40): use 'oversample'")
    assert "Only 40 training images of 'N'" in severe
    # Kaggle's test split is 37.5% NORMAL against 25.7% in train.
    shifted = advice([1341, 3875], [234, 390])
    assert "The test split's class mix differs from train ('N': 38% in test vs 26% in train)" in shifted


def test_every_strategy_is_accepted_and_offered_by_the_cli():
    from radflow.cli import build_parser

    for strategy in STRATEGIES:
        assert compute_class_balance(_metadata([5, 10], ["N", "P"]), ClassBalanceConfig(strategy)).strategy == strategy
        args = build_parser().parse_args(["class-balance", "e", "o", "--strategy", strategy])
        assert args.strategy == strategy


def test_balance_written_before_the_new_fields_still_reads():
    old = ('{"class_weights": {"0": 2.0, "1": 0.5}, "counts": {"train": {"N": 1, "P": 4}}, "imbalance_ratio": 4.0, '
           '"initial_bias": [1.386], "label_names": ["N", "P"], "strategy": "class_weights"}')
    balance = ClassBalance.from_json(old)
    assert balance.class_weights == {0: 2.0, 1: 0.5} and balance.sampling_weights == {}


def test_written_balance_round_trips_with_a_chart(examples_dir, tmp_path):
    written = class_balance(examples_dir, str(tmp_path), ClassBalanceConfig(strategy="oversample"))
    assert read_class_balance(str(tmp_path)) == written
    assert isinstance(written, ClassBalance) and written.strategy == "oversample"
    assert written.sampling_weights == {0: 0.5, 1: 0.5} and written.recommendation
    assert set(written.counts) == set(ex.SPLITS)
    assert (tmp_path / "class_counts.png").stat().st_size > 1000
