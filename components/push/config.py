"""Options of the push stage; light to import, so compiling the pipeline needs no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PushConfig:
    model_name: str = "radflow"  # the directory under serving_root, and the name clients ask TF Serving for
