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
from radflow.pipeline.capacity import KATIB_PARALLEL_TRIALS
from radflow.pipeline.config import ClusterConfig

log = logging.getLogger(__name__)

TUNING_FILE = "tuning.json"
OBJECTIVE = "val_auc"
KATIB_ALGORITHMS = {"bayesian": "bayesianoptimization", "random": "random"}
# Trial parameters: (TrainConfig field, Katib parameter name, radflow train flag).
_PARAMS = (("learning_rate", "learning-rate", "--learning-rate"), ("dropout", "dropout", "--dropout"),
           ("model", "model", "--model"), ("unfreeze_layers", "unfreeze-layers", "--unfreeze-layers"))


# Both searches start with this many random trials before the Bayesian model proposes any (KerasTuner's
# num_initial_points, default 3 per hyperparameter; Katib skopt's n_initial_points, default 10), and both
# seed their sampling with the TrainConfig seed.
INITIAL_RANDOM_TRIALS = 4
_DOUBLES = ("learning_rate", "dropout")


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameters searched, and how.

    Katib's Bayesian optimisation (skopt) samples every double log-uniformly, whatever its
    `distribution` (kubeflow/katib pkg/suggestion/v1beta1/skopt/base_service.py at 33c8ff4e:
    skopt.space.Real(min, max, "log-uniform") for every DOUBLE); its random search and KerasTuner
    honour the declared prior. So a double searched uniformly would be searched differently on a
    cluster: `log_sampled` declares the log-uniform ones, and `katib_experiment` refuses a uniform
    double under Bayesian optimisation rather than let the two searches differ silently.
    """

    learning_rate: tuple[float, float] = (1e-4, 3e-3)  # range of phase 1's step size
    dropout: tuple[float, float] = (0.1, 0.5)  # range of the head's dropout
    model: tuple[str, ...] = ("baseline_cnn", "mobilenet_v2", "efficientnet_b0")  # architectures to try
    unfreeze_layers: tuple[int, ...] = (10, 20, 40)  # fine-tuning depth (pretrained backbones only)
    # The doubles sampled log-uniformly (the others uniformly): dropout too, as Katib's Bayesian search does it.
    log_sampled: tuple[str, ...] = ("learning_rate", "dropout")


def _hyperparameters(space: SearchSpace):
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name in _DOUBLES:
        hp.Float(name, *getattr(space, name), sampling="log" if name in space.log_sampled else "linear")
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
    common = {"objective": kt.Objective(OBJECTIVE, "max"), "max_trials": max_trials,
              "hyperparameters": _hyperparameters(space), "seed": config.seed}
    if algorithm == "bayesian":
        oracle = kt.oracles.BayesianOptimizationOracle(num_initial_points=INITIAL_RANDOM_TRIALS, **common)
    else:
        oracle = kt.oracles.RandomSearchOracle(**common)
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
                     parallel_trials: int = KATIB_PARALLEL_TRIALS, algorithm: str = "bayesian", epochs: int = 30,
                     cluster: ClusterConfig = ClusterConfig(), seed: int = 0) -> dict[str, Any]:
    """The Katib Experiment (kubeflow.org/v1beta1) searching `space` with `radflow train` trials.

    Each trial pod is placed and sized as the pipeline's train step: GPUs, node selector and
    tolerations of the GPU pool, CPU and memory requests, and the pipeline's service account
    (Workload Identity reads the gs:// inputs).

    Args:
        space: the search space.
        name, namespace: the Experiment's metadata.
        image: the project image every trial runs.
        examples_uri: an ingest output the trials can read (gs:// or a mounted path).
        class_balance_uri: a class_balance output.
        max_trials, parallel_trials: Katib's trial budget and concurrency (`radflow capacity` counts the latter).
        algorithm: "bayesian" or "random".
        epochs: upper bound of each trial's phase 1.
        cluster: the GPU pool, requests and service account, as for train.
        seed: the search's random state (KerasTuner: TrainConfig.seed).

    Raises:
        ValueError: a double declared uniform under "bayesian", which Katib would sample log-uniformly.
    """
    from radflow.pipeline.cluster import parse_label, parse_toleration

    uniform = [d for d in _DOUBLES if d not in space.log_sampled]
    if algorithm == "bayesian" and uniform:
        raise ValueError(f"Katib's Bayesian optimisation samples every double log-uniformly; {uniform} are declared "
                         "uniform (SearchSpace.log_sampled), so the cluster search would differ from KerasTuner's: "
                         "sample them log-uniformly, or use algorithm='random'")
    params = []
    for field_name, katib_name, _ in _PARAMS:
        values = getattr(space, field_name)
        if field_name in _DOUBLES:
            params.append({"name": katib_name, "parameterType": "double", "feasibleSpace": {
                "min": str(values[0]), "max": str(values[1]),
                "distribution": "logUniform" if field_name in space.log_sampled else "uniform"}})
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
    resources: dict[str, Any] = {"requests": {"cpu": cluster.train_cpu, "memory": cluster.train_memory},
                                 "limits": {"memory": cluster.train_memory}}
    pod: dict[str, Any] = {"restartPolicy": "Never", "serviceAccountName": cluster.tfjob_service_account}
    if cluster.gpus:
        resources["limits"][cluster.accelerator] = cluster.gpus
        pod["nodeSelector"] = dict(parse_label(label) for label in cluster.gpu_node_selector)
        pod["tolerations"] = [parse_toleration(t) for t in cluster.gpu_tolerations]
    pod["containers"] = [{"name": "training", "image": image, "command": command, "resources": resources}]
    algorithm_spec: dict[str, Any] = {"algorithmName": KATIB_ALGORITHMS[algorithm]}
    if algorithm == "bayesian":  # skopt's settings (pkg/suggestion/v1beta1/skopt/service.py)
        algorithm_spec["algorithmSettings"] = [{"name": "n_initial_points", "value": str(INITIAL_RANDOM_TRIALS)},
                                               {"name": "random_state", "value": str(seed)}]
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": OBJECTIVE},
            "algorithm": algorithm_spec,
            "maxTrialCount": max_trials,
            "parallelTrialCount": parallel_trials,
            "maxFailedTrialCount": max(1, max_trials // 4),
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": params,
            "trialTemplate": {
                "primaryContainerName": "training",
                "trialParameters": trial_parameters,
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": pod}}},
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Writes the Katib Experiment for the default SearchSpace (see the module docstring)."""
    import yaml

    from radflow.pipeline.cluster import container_image
    from radflow.pipeline.config import load_config

    parser = argparse.ArgumentParser(description="Render the train search space as a Katib Experiment.")
    parser.add_argument("--out", default="-", help="YAML file to write (default: stdout)")
    parser.add_argument("--examples", default="gs://BUCKET/radflow/examples", help="ingest output the trials read")
    parser.add_argument("--class-balance", default="gs://BUCKET/radflow/class_balance", help="class_balance output")
    parser.add_argument("--config", help="pipeline config: the trials take its image (with cluster.registry), its "
                        "cluster section's GPU pool, requests and service account, and train.seed")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    text = "# Generated by `python -m radflow.components.train.tuning`; do not edit.\n" + yaml.safe_dump(
        katib_experiment(examples_uri=args.examples, class_balance_uri=args.class_balance,
                         image=container_image(config.image, config.cluster.registry), cluster=config.cluster,
                         seed=config.train.seed), sort_keys=False)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
