"""An ensemble of cross-validation fold models, as one Keras model: the mean of its members' scores.

One home for its shape, because train builds it and the explanations (Grad-CAM on the model card
and the review page) must find its members inside it.
"""

from __future__ import annotations

import keras

ENSEMBLE_NAME = "ensemble"


def ensemble_model(members: list[keras.Model]) -> keras.Model:
    """A model whose output is the mean of `members`' outputs on the same input.

    Each member is wrapped in its own uniquely named layer, since the fold models all carry the
    same name and a functional model's layers must differ.

    Args:
        members: models of one architecture, input and output shape.

    Returns:
        The ensemble, saveable as one .keras file and exportable like any model.
    """
    inputs = keras.Input(members[0].input_shape[1:], name="image")
    outputs = [keras.Sequential([m], name=f"member_{i}")(inputs) for i, m in enumerate(members)]
    return keras.Model(inputs, keras.layers.Average(name="mean_score")(outputs), name=ENSEMBLE_NAME)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble; [model] itself for any other model."""
    if model.name != ENSEMBLE_NAME:
        return [model]
    return [layer.layers[0] for layer in model.layers if layer.name.startswith("member_")]
