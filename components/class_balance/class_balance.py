"""class_balance: how imbalanced the training split is, and what training should do about it.

The chest X-ray set is about 1:3 NORMAL:PNEUMONIA. Left alone, a network learns the prior and
reports good accuracy with poor specificity. This stage turns the counts in the examples'
metadata into class weights and an initial output bias that train reads.

    radflow class-balance runs/examples runs/class_balance
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.config import ClassBalanceConfig

RESULT_FILE = "class_balance.json"
CHART_FILE = "class_counts.png"
STRATEGIES = ("class_weights", "none")


@dataclass(frozen=True)
class ClassBalance:
    """What train needs to know about the label distribution of the training split.

    Args:
        label_names: class names in label order.
        counts: split -> class -> count.
        class_weights: class index -> loss weight (all 1.0 when strategy is "none").
        initial_bias: output-layer bias: [log(pos/neg)] for a binary sigmoid head, log priors
            for a softmax head, so the untrained model already predicts the training prior.
        imbalance_ratio: largest class count / smallest in train.
        strategy: how train applies the weights.
    """

    label_names: list[str]
    counts: dict[str, dict[str, int]]
    class_weights: dict[int, float]
    initial_bias: list[float]
    imbalance_ratio: float
    strategy: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClassBalance:
        raw = json.loads(text)
        raw["class_weights"] = {int(k): float(v) for k, v in raw["class_weights"].items()}
        return cls(**raw)


def class_weights(counts: list[int]) -> list[float]:
    """n_total / (n_classes * n_c): every class then carries the same total weight in the loss."""
    total, k = sum(counts), len(counts)
    return [total / (k * n) for n in counts]


def initial_bias(counts: list[int]) -> list[float]:
    """The output bias that makes an untrained model predict the class priors.

    Binary (sigmoid, one unit): [log(pos/neg)]. Multi-class (softmax): log(n_c / n_total).
    """
    total = sum(counts)
    if len(counts) == 2:
        return [math.log(counts[1] / counts[0])]
    return [math.log(n / total) for n in counts]


def compute_class_balance(metadata: ex.DatasetMetadata, config: ClassBalanceConfig) -> ClassBalance:
    """Class weights and bias from the training split's counts.

    Raises:
        ValueError: a class has no training examples, or the strategy is unknown.
    """
    if config.strategy not in STRATEGIES:
        raise ValueError(f"unknown class-balance strategy {config.strategy!r}; choose one of {STRATEGIES}")
    train = [metadata.counts.get("train", {}).get(name, 0) for name in metadata.label_names]
    missing = [name for name, n in zip(metadata.label_names, train, strict=True) if n == 0]
    if missing:
        raise ValueError(f"class(es) {missing} have no training examples; cannot train a classifier for them")
    weights = class_weights(train) if config.strategy == "class_weights" else [1.0] * len(train)
    return ClassBalance(
        label_names=list(metadata.label_names),
        counts=metadata.counts,
        class_weights=dict(enumerate(weights)),
        initial_bias=initial_bias(train),
        imbalance_ratio=max(train) / min(train),
        strategy=config.strategy,
    )


def plot_counts(balance: ClassBalance, path: str) -> None:
    """A grouped bar chart of class counts per split, for people who would rather look than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in ex.SPLITS if s in balance.counts]
    width = 0.8 / len(balance.label_names)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, name in enumerate(balance.label_names):
        xs = [j + i * width for j in range(len(splits))]
        bars = ax.bar(xs, [balance.counts[s].get(name, 0) for s in splits], width, label=name)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks([j + width * (len(balance.label_names) - 1) / 2 for j in range(len(splits))], splits)
    ax.set_ylabel("images")
    ax.set_title(f"Class counts (train imbalance {balance.imbalance_ratio:.2f}:1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_balance(examples_dir: str, out_dir: str, config: ClassBalanceConfig = ClassBalanceConfig()) -> ClassBalance:
    """Computes the class balance of an examples directory and writes it for train.

    Args:
        examples_dir: a finished ingest output.
        out_dir: receives class_balance.json and class_counts.png.
        config: the strategy train should apply.

    Returns:
        The class balance that was written.
    """
    balance = compute_class_balance(ex.read_metadata(examples_dir), config)
    os.makedirs(out_dir, exist_ok=True)
    plot_counts(balance, os.path.join(out_dir, CHART_FILE))
    fileio.write_text_atomic(os.path.join(out_dir, RESULT_FILE), balance.to_json())
    return balance


def read_class_balance(out_dir: str) -> ClassBalance:
    return ClassBalance.from_json(fileio.read_text(os.path.join(out_dir, RESULT_FILE)))
