"""Hyperparameter search over one declared space: KerasTuner on one machine, Katib on a cluster.

`SearchSpace` is the single declaration. `tune` searches it locally with a KerasTuner oracle
(Bayesian optimisation by default), each trial a real `fit_model` on train/val, and returns the
best config. `katib_experiment` renders the same space as a Katib Experiment whose trials run
`radflow train` in the project image and report `val_auc=<x>` on stdout (Katib's StdOut
collector). The checked-in `infra/katib/experiment.yaml` is generated, never edited by hand:

    python -m radflow.components.train.tuning --out infra/katib/experiment.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

from radflow import __version__

log = logging.getLogger(__name__)

TUNING_FILE = "tuning.json"
OBJECTIVE = "val_auc"
KATIB_ALGORITHMS = {"bayesian": "bayesianoptimization", "random": "random"}
# Trial parameters: (TrainConfig field, Katib parameter name, radflow train flag).
_PARAMS = (("learning_rate", "learning-rate", "--learning-rate"), ("dropout", "dropout", "--dropout"),
           ("model", "model", "--model"), ("unfreeze_layers", "unfreeze-layers", "--unfreeze-layers"))


@dataclass(frozen=True)
class SearchSpace:
    learning_rate: tuple[float, float] = (1e-4, 3e-3)  # log-uniform range of phase 1's step size
    dropout: tuple[float, float] = (0.1, 0.5)  # uniform range of the head's dropout
    model: tuple[str, ...] = ("baseline_cnn", "mobilenet_v2", "efficientnet_b0")  # architectures to try
    unfreeze_layers: tuple[int, ...] = (10, 20, 40)  # fine-tuning depth (pretrained backbones only)


def _hyperparameters(space: SearchSpace):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Float("learning_rate", *space.learning_rate, sampling="log")
    hp.Float("dropout", *space.dropout)
    hp.Choice("model", list(space.model))
    hp.Choice("unfreeze_layers", list(space.unfreeze_layers))
    return hp


def tune(examples_dir: str, out_dir: str, balance, config, space: SearchSpace = SearchSpace(), max_trials: int = 8,
         algorithm: str = "bayesian"):
    """Searches `space` with KerasTuner; every trial fits on train and scores validation AUC.

    Args:
        examples_dir: an ingest output.
        out_dir: receives tuning/ (the oracle's trials, resumable) and tuning.json.
        balance: class_balance's output.
        config: the TrainConfig the searched fields are replaced in.
        space: the search space.
        max_trials: trials to run.
        algorithm: "bayesian" or "random".

    Returns:
        (best TrainConfig, best validation AUC).

    Raises:
        ValueError: unknown algorithm, or one weights file for several backbones.
    """
    import keras_tuner as kt

    from radflow import examples as ex
    from radflow import fileio
    from radflow.components.train.config import BASELINE
    from radflow.components.train.fit import fit_model
    from radflow.components.train.strategy import acceleration, choose_strategy, device_kind

    if algorithm not in KATIB_ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(KATIB_ALGORITHMS)}")
    backbones = [m for m in space.model if m != BASELINE]
    if config.weights.lower() != "none" and len(backbones) > 1:
        raise ValueError(f"one weights file cannot initialise several backbones {backbones}; search one at a time")
    strategy = choose_strategy()
    accel = acceleration(device_kind(strategy), config.mixed_precision, config.xla)
    metadata = ex.read_metadata(examples_dir)
    oracle_cls = kt.oracles.BayesianOptimizationOracle if algorithm == "bayesian" else kt.oracles.RandomSearchOracle
    oracle = oracle_cls(objective=kt.Objective(OBJECTIVE, "max"), max_trials=max_trials,
                        hyperparameters=_hyperparameters(space), seed=config.seed)
    trials: list[dict[str, Any]] = []

    class _Tuner(kt.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            values = {name: trial.hyperparameters.get(name) for name, _, _ in _PARAMS}
            trial_config = replace(config, cv_folds=0, weights=config.weights if values["model"] != BASELINE
                                   else "none", **values)
            fitted = fit_model(examples_dir, metadata, balance, trial_config, strategy, accel,
                               os.path.join(out_dir, "tuning", "fits", trial.trial_id), verbose=0)
            trials.append({"trial": trial.trial_id, **values, OBJECTIVE: fitted.best_val_auc})
            log.info("tune: trial %s %s -> %s=%.4f", trial.trial_id, values, OBJECTIVE, fitted.best_val_auc)
            return {OBJECTIVE: fitted.best_val_auc}

    tuner = _Tuner(oracle=oracle, directory=out_dir, project_name="tuning", overwrite=False)
    tuner.search()
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = {name: best_hp.get(name) for name, _, _ in _PARAMS}
    best_score = tuner.oracle.get_best_trials(1)[0].score
    fileio.write_text_atomic(os.path.join(out_dir, TUNING_FILE), json.dumps(
        {"algorithm": algorithm, "space": asdict(space), "best": best, OBJECTIVE: best_score, "trials": trials},
        indent=2))
    return replace(config, **best), best_score


def katib_experiment(space: SearchSpace = SearchSpace(), *, name: str = "radflow-tune",
                     namespace: str = "kubeflow", image: str = f"radflow:{__version__}",
                     examples_uri: str = "gs://BUCKET/radflow/examples",
                     class_balance_uri: str = "gs://BUCKET/radflow/class_balance", max_trials: int = 12,
                     parallel_trials: int = 3, algorithm: str = "bayesian", epochs: int = 30,
                     gpus: int = 1) -> dict[str, Any]:
    """The Katib Experiment (kubeflow.org/v1beta1) searching `space` with `radflow train` trials.

    Args:
        space: the search space.
        name, namespace: the Experiment's metadata.
        image: the project image every trial runs.
        examples_uri: an ingest output the trials can read (gs:// or a mounted path).
        class_balance_uri: a class_balance output.
        max_trials, parallel_trials: Katib's trial budget and concurrency.
        algorithm: "bayesian" or "random".
        epochs: upper bound of each trial's phase 1.
        gpus: GPUs per trial pod.
    """
    params = []
    for field_name, katib_name, _ in _PARAMS:
        values = getattr(space, field_name)
        if field_name in ("learning_rate", "dropout"):
            spec = {"min": str(values[0]), "max": str(values[1])}
            if field_name == "learning_rate":
                spec["distribution"] = "logUniform"
            params.append({"name": katib_name, "parameterType": "double", "feasibleSpace": spec})
        elif field_name == "model":
            params.append({"name": katib_name, "parameterType": "categorical",
                           "feasibleSpace": {"list": list(values)}})
        else:
            params.append({"name": katib_name, "parameterType": "discrete",
                           "feasibleSpace": {"list": [str(v) for v in values]}})
    command = ["radflow", "train", examples_uri, "/tmp/trial", "--class-balance", class_balance_uri,
               "--epochs", str(epochs)]
    trial_parameters = []
    for _, katib_name, flag in _PARAMS:
        ref = katib_name.replace("-", "_")
        command += [flag, f"${{trialParameters.{ref}}}"]
        trial_parameters.append({"name": ref, "reference": katib_name, "description": f"radflow train {flag}"})
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": OBJECTIVE},
            "algorithm": {"algorithmName": KATIB_ALGORITHMS[algorithm]},
            "maxTrialCount": max_trials,
            "parallelTrialCount": parallel_trials,
            "maxFailedTrialCount": max(1, max_trials // 4),
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": params,
            "trialTemplate": {
                "primaryContainerName": "training",
                "trialParameters": trial_parameters,
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {"template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "training", "image": image, "command": command,
                                        "resources": {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}}],
                    }}},
                },
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Writes the Katib Experiment for the default SearchSpace (see the module docstring)."""
    import yaml

    parser = argparse.ArgumentParser(description="Render the train search space as a Katib Experiment.")
    parser.add_argument("--out", default="-", help="YAML file to write (default: stdout)")
    parser.add_argument("--examples", default="gs://BUCKET/radflow/examples", help="ingest output the trials read")
    parser.add_argument("--class-balance", default="gs://BUCKET/radflow/class_balance", help="class_balance output")
    args = parser.parse_args(argv)
    text = "# Generated by `python -m radflow.components.train.tuning`; do not edit.\n" + yaml.safe_dump(
        katib_experiment(examples_uri=args.examples, class_balance_uri=args.class_balance), sort_keys=False)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
