"""KFP wrapper of train: maps artifacts to `radflow.components.train.train.train` arguments."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output


def train(examples: Input[Dataset], class_balance: Input[Artifact], config: dict, model: Output[Model],
          curves: Output[HTML]):
    """Trains the configured model under the machine's tf.distribute strategy and exports it.

    Args:
        examples: an ingest output.
        class_balance: a class_balance output.
        config: TrainConfig fields.
        model: saved_model/ (the servable), model.keras, history, cv.json (with cv_folds) and training.json.
        curves: training curves, rendered by the KFP UI.
    """
    from radflow.components.class_balance.class_balance import read_class_balance
    from radflow.components.train.train import CURVES_FILE, TrainConfig
    from radflow.components.train.train import train as run_train
    from radflow.pipeline.config import from_dict
    from radflow.report import write_images_html

    result = run_train(examples.path, model.path, read_class_balance(class_balance.path),
                       from_dict(TrainConfig, config))
    model.metadata.update({"framework": "tensorflow", "model": result.model, "strategy": result.strategy,
                           "replicas": result.replicas, "epochs_run": result.epochs_run,
                           "best_val_auc": result.best_val_auc, "last_conv_layer": result.last_conv_layer})
    if result.cv:
        model.metadata["cv_val_auc"] = result.cv["metrics"]["val_auc"]
    write_images_html(curves.path, "Training curves", [f"{model.path}/{CURVES_FILE}"])
