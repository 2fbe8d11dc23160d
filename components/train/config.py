"""Options of the train stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # upper bound; early stopping on validation AUC usually ends sooner
    batch_size: int = 32  # per replica; the global batch is this times the number of replicas
    learning_rate: float = 1e-3  # Adam's step size
    patience: int = 5  # epochs without a better validation AUC before stopping
    warmup_epochs: int = 3  # epochs before early stopping may act (batch-norm statistics are still settling)
    filters: tuple[int, ...] = (16, 32, 64, 64)  # channels of each conv/pool block of the baseline CNN
    dense_units: int = 64  # width of the dense layer before the output
    dropout: float = 0.3  # before the dense layer
    seed: int = 0  # weights, shuffling and dropout
