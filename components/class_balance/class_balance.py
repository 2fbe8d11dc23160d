"""class_balance: how imbalanced the training split is, and what training should do about it.

The chest X-ray set is about 1:3 NORMAL:PNEUMONIA. Left alone, a network learns the prior and
reports good accuracy with poor specificity. This stage turns the counts in the examples'
metadata into what train reads: the strategy (class weights, oversampling in tf.data, or none),
class weights, the share of each class training batches should have, and an initial output
bias; plus a recommendation in words and a chart of the counts per split.

    radflow class-balance runs/examples runs/class_balance
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from radflow import examples as ex
from radflow import fileio
from radflow.components.class_balance.config import CLASS_WEIGHTS, OVERSAMPLE, STRATEGIES, ClassBalanceConfig

RESULT_FILE = "class_balance.json"
CHART_FILE = "class_counts.png"
# Imbalance ratios (largest / smallest training class) where the advice changes.
MILD_RATIO, SEVERE_RATIO = 1.5, 10.0
FEW_EXAMPLES = 100  # a minority class this small gives noisy per-class metrics whatever the strategy
MIX_SHIFT = 0.1  # a class share differing this much between train and test changes precision on test


@dataclass(frozen=True)
class ClassBalance:
    """What train needs to know about the label distribution of the training split.

    Args:
        label_names: class names in label order.
        counts: split -> class -> count.
        class_weights: class index -> loss weight (all 1.0 unless strategy is "class_weights").
        initial_bias: output-layer bias: [log(pos/neg)] for a binary sigmoid head, log priors
            for a softmax head, of the class mix training batches have, so the untrained model
            already predicts it (the data's priors; uniform when oversampling).
        imbalance_ratio: largest class count / smallest in train.
        strategy: how train handles the imbalance: "class_weights", "oversample" or "none".
        sampling_weights: class index -> share of that class in training batches; uniform for
            "oversample" (train draws each class with this probability), the training priors otherwise.
        recommendation: what to do about the imbalance, in words, for people.
    """

    label_names: list[str]
    counts: dict[str, dict[str, int]]
    class_weights: dict[int, float]
    initial_bias: list[float]
    imbalance_ratio: float
    strategy: str
    sampling_weights: dict[int, float] = field(default_factory=dict)
    recommendation: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClassBalance:
        raw = json.loads(text)
        for key in ("class_weights", "sampling_weights"):
            raw[key] = {int(k): float(v) for k, v in raw.get(key, {}).items()}
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


def sampling_weights(counts: list[int], strategy: str) -> list[float]:
    """The share of each class in training batches: 1/K when oversampling, the class priors otherwise."""
    if strategy == OVERSAMPLE:
        return [1.0 / len(counts)] * len(counts)
    total = sum(counts)
    return [n / total for n in counts]


def recommend(label_names: list[str], counts: dict[str, dict[str, int]]) -> str:
    """What to do about the training split's imbalance, in words.

    Args:
        label_names: class names in label order.
        counts: split -> class -> count; train decides the advice, test adds a caveat.

    Returns:
        A few sentences: how imbalanced, which strategy, and what to watch.
    """
    train = [counts["train"][name] for name in label_names]
    ratio = max(train) / min(train)
    minority = label_names[train.index(min(train))]
    if ratio < MILD_RATIO:
        advice = (f"Classes are roughly balanced ({ratio:.2f}:1): no correction is needed; "
                  f"'none' and 'class_weights' behave almost alike.")
    elif ratio < SEVERE_RATIO:
        advice = (f"Moderate imbalance ({ratio:.2f}:1, minority {minority!r} with {min(train)}): use "
                  f"'class_weights' (the default): every class carries the same total weight in the loss, "
                  f"all images are kept and none is repeated. Judge models by ROC/PR AUC, not accuracy, and "
                  f"choose the operating threshold on validation.")
    else:
        advice = (f"Severe imbalance ({ratio:.2f}:1, minority {minority!r} with {min(train)}): use 'oversample' "
                  f"so every training batch holds each class equally often (class weights this large make "
                  f"gradients noisy); augment to avoid memorising the repeated minority images, and watch PR AUC.")
    notes = [advice]
    if min(train) < FEW_EXAMPLES:
        notes.append(f"Only {min(train)} training images of {minority!r}: its metrics will be noisy whatever "
                     f"the strategy; more data helps most.")
    test = counts.get("test", {})
    if sum(test.values()):
        shifts = {n: test.get(n, 0) / sum(test.values()) - t / sum(train) for n, t in zip(label_names, train,
                                                                                         strict=True)}
        worst = max(shifts, key=lambda n: abs(shifts[n]))
        if abs(shifts[worst]) > MIX_SHIFT:
            share = test.get(worst, 0) / sum(test.values())
            notes.append(f"The test split's class mix differs from train ({worst!r}: {share:.0%} in test vs "
                         f"{share - shifts[worst]:.0%} in train): precision and NPV measured on test hold only "
                         f"at test's prevalence.")
    return " ".join(notes)


def compute_class_balance(metadata: ex.DatasetMetadata, config: ClassBalanceConfig) -> ClassBalance:
    """Class weights, sampling weights, bias and advice from the training split's counts.

    Raises:
        ValueError: a class has no training examples, or the strategy is unknown.
    """
    if config.strategy not in STRATEGIES:
        raise ValueError(f"unknown class-balance strategy {config.strategy!r}; choose one of {STRATEGIES}")
    train = [metadata.counts.get("train", {}).get(name, 0) for name in metadata.label_names]
    missing = [name for name, n in zip(metadata.label_names, train, strict=True) if n == 0]
    if missing:
        raise ValueError(f"class(es) {missing} have no training examples; cannot train a classifier for them")
    weights = class_weights(train) if config.strategy == CLASS_WEIGHTS else [1.0] * len(train)
    shares = sampling_weights(train, config.strategy)
    counts = {s: {n: metadata.counts.get(s, {}).get(n, 0) for n in metadata.label_names}
              for s in ex.SPLITS if s in metadata.counts}
    return ClassBalance(
        label_names=list(metadata.label_names),
        counts=counts,
        class_weights=dict(enumerate(weights)),
        # The bias matches what the batches hold: the data's priors, or uniform when oversampling.
        initial_bias=initial_bias(train if config.strategy != OVERSAMPLE else [1] * len(train)),
        imbalance_ratio=max(train) / min(train),
        strategy=config.strategy,
        sampling_weights=dict(enumerate(shares)),
        recommendation=recommend(list(metadata.label_names), counts),
    )


def imbalance(counts: dict[str, int]) -> str:
    """A split's imbalance ratio as text, e.g. "3.00:1", or which class it lacks."""
    if min(counts.values()) == 0:
        return "no " + ", ".join(n for n, c in counts.items() if c == 0)
    return f"{max(counts.values()) / min(counts.values()):.2f}:1"


def plot_counts(balance: ClassBalance, path: str) -> None:
    """A grouped bar chart of class counts per split, for people who would rather look than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in ex.SPLITS if sum(balance.counts.get(s, {}).values())]
    width = 0.8 / len(balance.label_names)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, name in enumerate(balance.label_names):
        xs = [j + i * width for j in range(len(splits))]
        bars = ax.bar(xs, [balance.counts[s].get(name, 0) for s in splits], width, label=name)
        ax.bar_label(bars, fontsize=8)
    ticks = [f"{s}\n({imbalance(balance.counts[s])})" for s in splits]
    ax.set_xticks([j + width * (len(balance.label_names) - 1) / 2 for j in range(len(splits))], ticks)
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

    Raises:
        FileNotFoundError: `examples_dir` is not a finished ingest output.
        ValueError: see `compute_class_balance`.
    """
    balance = compute_class_balance(ex.read_metadata(examples_dir), config)
    os.makedirs(out_dir, exist_ok=True)
    plot_counts(balance, os.path.join(out_dir, CHART_FILE))
    fileio.write_text_atomic(os.path.join(out_dir, RESULT_FILE), balance.to_json())
    return balance


def read_class_balance(out_dir: str) -> ClassBalance:
    """Reads back what `class_balance` wrote (train's input)."""
    return ClassBalance.from_json(fileio.read_text(os.path.join(out_dir, RESULT_FILE)))
