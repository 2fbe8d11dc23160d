"""How many GPUs the pipeline, a Katib search and GPU serving ask for at once, against the pool they share.

The GPU pool is the one `cluster.gpu_node_selector` names: at most `gpu_pool_nodes` nodes of
`gpus_per_node` GPUs (infra/gke's gpu_max_nodes x zones and gpus_per_node; tests/test_infra.py keeps
them equal). GPU TF Serving (infra/serving/overlays/gpu) holds up to `serving_gpus` of them.

Two kinds of findings:
- errors: a pod no node can hold (more GPUs than a node has), or a TFJob whose workers cannot all
  run at once (MultiWorkerMirroredStrategy waits for every worker): the run could never finish;
- warnings: parallel demand beyond the pool (fold tasks, Katib trials, both at once): the pods
  queue, the cluster autoscaler reports "max node group size reached", and `submit --wait` waits.

    radflow capacity --config gke.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

from radflow.pipeline.config import PipelineConfig

KATIB_PARALLEL_TRIALS = 3  # parallelTrialCount of the generated infra/katib/experiment.yaml


@dataclass(frozen=True)
class Capacity:
    pool: int  # GPUs the pool can hold at its maximum
    free: int  # of those, what GPU serving leaves
    pipeline: int  # the pipeline's peak: train, its fold tasks side by side, or a TFJob's workers
    katib: int  # a Katib search's parallel trials
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


def capacity(config: PipelineConfig, katib_parallel_trials: int = KATIB_PARALLEL_TRIALS) -> Capacity:
    """The GPU demand of `config` and what does not fit its pool (nothing is checked when gpus is 0).

    Args:
        config: the pipeline config; its cluster section describes the pool.
        katib_parallel_trials: parallel trials of the Katib search run beside the pipeline.

    Returns:
        The figures, errors and warnings; each names the config fields to change.
    """
    c = config.cluster
    pool = c.gpu_pool_nodes * c.gpus_per_node
    free = pool - c.serving_gpus
    folds = config.train.cv_folds if config.train.cv_folds >= 2 and c.train_workers <= 1 else 1
    pipeline = c.gpus * max(c.train_workers, folds)
    katib = c.gpus * katib_parallel_trials
    errors, warnings = [], []
    if c.gpus == 0 or c.gpu_pool_nodes == 0:  # CPU training, or a pool left undescribed
        return Capacity(pool, free, pipeline, katib, (), ())
    # Errors: past the pool's hard limits, a pod or a TFJob never runs.
    if c.gpus > c.gpus_per_node:
        errors.append(f"cluster.gpus ({c.gpus}) is more than one node of the pool has (cluster.gpus_per_node "
                      f"{c.gpus_per_node}): no node can ever take a train pod")
    if c.train_workers > 1 and pipeline > pool:
        errors.append(f"cluster.train_workers x gpus = {pipeline} GPUs must run at once, but the pool holds {pool} "
                      f"(cluster.gpu_pool_nodes {c.gpu_pool_nodes} x gpus_per_node {c.gpus_per_node}): the TFJob "
                      "would wait forever")
    if c.serving_gpus > pool:
        errors.append(f"cluster.serving_gpus ({c.serving_gpus}) is more than the pool holds ({pool})")
    # Warnings: beyond what GPU serving at its maximum leaves, pods queue until others finish.
    left = f"the pool leaves {free} ({pool} - cluster.serving_gpus {c.serving_gpus})"
    if c.gpus > free:
        warnings.append(f"a train pod needs {c.gpus} GPU(s) but {left}: it waits until serving scales down")
    elif pipeline > free:
        what = (f"train.cv_folds: {folds} fold tasks" if folds > 1 else f"cluster.train_workers: {c.train_workers}"
                " workers")
        warnings.append(f"{what} x {c.gpus} GPU(s) = {pipeline} at once, but {left}: they run in "
                        f"{-(-pipeline // free)} waves (submit --wait waits for them)")
    if katib > free:
        warnings.append(f"Katib: {katib_parallel_trials} parallel trials x {c.gpus} GPU(s) = {katib}, but {left}: "
                        "trials queue (lower parallelTrialCount)")
    elif pipeline <= free < pipeline + katib:
        warnings.append(f"a run ({pipeline} GPUs) and a Katib search ({katib}) at once need {pipeline + katib}, "
                        f"but {left}: whichever starts second queues")
    return Capacity(pool, free, pipeline, katib, tuple(errors), tuple(warnings))


def check_capacity(config: PipelineConfig) -> tuple[str, ...]:
    """The warnings of `capacity` for a compile; its errors raise.

    Raises:
        ValueError: a pod or a TFJob that can never run on the configured pool.
    """
    found = capacity(config)
    if found.errors:
        raise ValueError("; ".join(found.errors))
    return found.warnings
