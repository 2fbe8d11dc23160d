"""Bounded field types for the stages' config dataclasses.

A field declared `val_fraction: Fraction = 0.1` is still a plain float to every stage; the bound
is metadata that `radflow.pipeline.config` checks when a config is loaded (with the field's path
in the message) and that the generated configuration reference prints. Constructing a dataclass
directly checks nothing, so tests and stages build configs freely.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval

Fraction = Annotated[float, Interval(ge=0, le=1)]  # a share, a probability or a relative size
Positive = Annotated[int, Ge(1)]  # a size or a count that cannot be 0
NonNegative = Annotated[int, Ge(0)]  # a count where 0 means none (or off)
PositiveFloat = Annotated[float, Gt(0)]  # a rate, a duration or a scale
NonNegativeFloat = Annotated[float, Ge(0)]  # a tolerance
