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
    from radflow.components.train.train import CURVES_FILE, TrainConfig, model_metadata
    from radflow.components.train.train import train as run_train
    from radflow.pipeline.config import from_dict
    from radflow.report import write_images_html

    result = run_train(examples.path, model.path, read_class_balance(class_balance.path),
                       from_dict(TrainConfig, config))
    model.metadata.update(model_metadata(result))
    write_images_html(curves.path, "Training curves", [f"{model.path}/{CURVES_FILE}"])


def train_fold(examples: Input[Dataset], class_balance: Input[Artifact], config: dict, fold: int,
               fold_result: Output[Artifact]):
    """Fits one cross-validation fold, so that on a cluster the folds run as parallel tasks.

    Args:
        examples: an ingest output.
        class_balance: a class_balance output.
        config: TrainConfig fields, with cv_folds >= 2.
        fold: the fold to hold out.
        fold_result: folds.json with this fold's validation metrics.
    """
    from radflow.components.class_balance.class_balance import read_class_balance
    from radflow.components.train.cv import fit_fold
    from radflow.components.train.train import TrainConfig
    from radflow.pipeline.config import from_dict

    result = fit_fold(examples.path, fold_result.path, read_class_balance(class_balance.path),
                      from_dict(TrainConfig, config), fold)
    fold_result.metadata.update({"fold": fold, "val_auc": result.get("val_auc")})


def merge_folds(first: Input[Artifact], second: Input[Artifact], merged: Output[Artifact]):
    """Joins the fold results of two tasks (a fan-in without ParallelFor, which kfp.local lacks).

    Args:
        first: a train_fold or merge_folds output.
        second: another one.
        merged: folds.json with both's fold results.
    """
    from radflow.components.train.cv import merge_folds as run_merge

    merged.metadata["folds"] = [f["fold"] for f in run_merge(first.path, second.path, merged.path)]


def train_after_folds(examples: Input[Dataset], class_balance: Input[Artifact], folds: Input[Artifact],
                      config: dict, model: Output[Model], curves: Output[HTML]):
    """The final fit after separate fold tasks: summarises their results instead of refitting them.

    Args:
        examples: an ingest output.
        class_balance: a class_balance output.
        folds: the merged fold results of every fold task.
        config: TrainConfig fields.
        model: as `train`'s, with cv.json.
        curves: training curves, rendered by the KFP UI.
    """
    from radflow.components.class_balance.class_balance import read_class_balance
    from radflow.components.train.cv import read_folds
    from radflow.components.train.train import CURVES_FILE, TrainConfig, model_metadata
    from radflow.components.train.train import train as run_train
    from radflow.pipeline.config import from_dict
    from radflow.report import write_images_html

    result = run_train(examples.path, model.path, read_class_balance(class_balance.path),
                       from_dict(TrainConfig, config), fold_results=read_folds(folds.path))
    model.metadata.update(model_metadata(result))
    write_images_html(curves.path, "Training curves", [f"{model.path}/{CURVES_FILE}"])
