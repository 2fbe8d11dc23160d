"""The `radflow` command: run the whole pipeline, or any one stage on plain paths.

Every stage subcommand calls the same function the pipeline's component calls, so a stage can
be debugged on a laptop exactly as it runs in the cluster. Try:

    radflow synth data/sample              # a synthetic chest X-ray set in Kaggle's layout
    radflow run --local --data data/sample # the whole DAG under kfp.local
    radflow ingest data/sample runs/examples
    radflow --help, radflow <command> --help
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from dataclasses import asdict

from radflow.components.class_balance.config import STRATEGIES

log = logging.getLogger("radflow")


def _setup_logging(verbose: bool) -> None:
    import warnings

    # TensorFlow's C++ logging is read from the environment when TF loads, which is after this, in
    # this process and in every task a local run starts. Level 3 also hides the "Unable to register
    # cuDNN/cuFFT/cuBLAS factory" lines TF 2.16 logs as errors on every start; -v keeps level 2.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose else "3")
    if not verbose:  # google-api-core's Python-version notices, once per imported client library
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("apache_beam", "tensorflow", "absl", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stage_config(args: argparse.Namespace, section: str, **overrides):
    """The config of one stage: defaults, then the --config file's section, then flags."""
    from radflow.pipeline.config import from_dict, load_config

    base = getattr(load_config(args.config), section)
    values = {**asdict(base), **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(type(base), values)


def cmd_synth(args: argparse.Namespace) -> int:
    from radflow.synth import synthesize

    summary = synthesize(args.out, n=args.n, seed=args.seed)
    print(f"wrote {args.out}: {json.dumps(summary.counts)}; {len(summary.corrupt)} deliberately corrupt files; "
          f"{summary.patients} patients")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from radflow.components.ingest.ingest import ingest

    config = _stage_config(args, "ingest", image_size=args.image_size, channels=args.channels,
                           resize_policy=args.resize_policy, official_splits=args.official_splits,
                           runner=args.runner, beam_args=tuple(shlex.split(args.beam_args or "")) or None,
                           patient_key_secret_file=args.patient_key_secret_file,
                           patient_id_pattern=args.patient_id_pattern,
                           allow_image_level_splits=args.allow_image_level_splits or None,
                           dicomweb_labels=args.labels, dicomweb_credentials_file=args.pacs_credentials,
                           dicomweb_ca_file=args.pacs_ca_file)
    result = ingest(args.source, args.out, config)
    print(f"{result.total} inputs: {result.states}; quarantine reasons: {result.reasons or 'none'}")
    print(f"examples per split and class: {json.dumps(result.metadata.counts)}")
    print(f"manifest: {os.path.join(args.out, 'manifest.csv')}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from radflow.components.validate.validate import (
        HTML_FILE,
        DataValidationError,
        last_blessed_statistics,
        validate,
    )

    config = _stage_config(args, "validate", **_schema_fields(args.schema))
    baseline = args.baseline or last_blessed_statistics(args.serving_root or "", _stage_config(args, "push").model_name)
    try:
        result = validate(args.examples, args.out, config, baseline=baseline)
    except DataValidationError as err:
        print(f"validation failed:\n{err}", file=sys.stderr)
        return 1
    for line in result.warnings:
        print(f"warning: {line}")
    verdict = "no anomalies" if result.passed else f"{len(result.anomalies)} anomalies (fail_on_anomalies is off)"
    print(f"{verdict}; examples per split: {result.num_examples}; patients per split and class: {result.patients}")
    print(f"drift baseline: {baseline or 'none'}; report: {os.path.join(args.out, HTML_FILE)}")
    return 0


def _schema_fields(value: str | None) -> dict[str, str]:
    """The validate fields --schema sets: "infer", a curated schema's name, or a schema file.

    Raises:
        ValueError: an empty value (it used to mean the default schema, silently).
        FileNotFoundError: a schema file that does not exist.
    """
    from radflow.components.validate.config import CURATED_DIR

    if value is None:
        return {}
    if value == "infer":
        return {"schema_name": "", "schema_path": ""}
    curated = sorted(f.removesuffix(".pbtxt") for f in os.listdir(CURATED_DIR) if f.endswith(".pbtxt"))
    if not value:
        raise ValueError(f"--schema needs infer, a curated schema name ({', '.join(curated)}) or a .pbtxt file")
    if value in curated:
        return {"schema_name": value, "schema_path": ""}
    if "://" not in value and not os.path.isfile(value):
        raise FileNotFoundError(f"--schema {value}: no such schema file, and no curated schema of that name "
                                f"({', '.join(curated)}); --schema infer infers one from train")
    return {"schema_path": value}


def cmd_schema_freeze(args: argparse.Namespace) -> int:
    from radflow.components.validate.config import CURATED_DIR, SHIPPED_SCHEMAS

    dest_dir = args.dir or CURATED_DIR
    dest = os.path.join(dest_dir, f"{args.name}.pbtxt")
    if os.path.exists(dest) and not args.force:
        shipped = " (shipped with radflow)" if dest_dir == CURATED_DIR and args.name in SHIPPED_SCHEMAS else ""
        raise FileExistsError(f"{dest} exists{shipped}; choose another --name, or pass --force to replace it")
    from radflow.components.validate.schema import freeze

    path = freeze(args.run, args.name, dest_dir)
    if dest_dir == CURATED_DIR:
        print(f"wrote {path}; runs validate against it with --schema {args.name} "
              f"(in a config: validate: {{schema_name: {args.name}}})")
    else:
        print(f"wrote {path}; point a run at it with --schema {path} "
              f"(in a config: validate: {{schema_path: {path}}})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "reference":
        from radflow.pipeline.reference import reference

        sys.stdout.write(reference())
        return 0
    from radflow.pipeline.config import ConfigError, load_config

    failed = 0
    for path in args.files:
        try:
            load_config(path)
        except (ConfigError, FileNotFoundError) as err:
            failed += 1
            for line in getattr(err, "problems", [str(err)]):
                print(f"radflow config: error: {line}", file=sys.stderr)
            continue
        print(f"{path}: ok")
    return 1 if failed else 0


def cmd_class_balance(args: argparse.Namespace) -> int:
    from radflow.components.class_balance.class_balance import class_balance

    balance = class_balance(args.examples, args.out, _stage_config(args, "class_balance", strategy=args.strategy))
    print(balance.to_json())
    print(f"recommendation: {balance.recommendation}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from radflow import examples as ex
    from radflow.components.class_balance.class_balance import compute_class_balance, read_class_balance
    from radflow.components.train.train import train

    if args.class_balance:
        balance = read_class_balance(args.class_balance)
    else:
        balance = compute_class_balance(ex.read_metadata(args.examples), _stage_config(args, "class_balance"))
    config = _stage_config(args, "train", epochs=args.epochs, model=args.model, weights=args.weights,
                           learning_rate=args.learning_rate, dropout=args.dropout,
                           unfreeze_layers=args.unfreeze_layers, cv_folds=args.cv_folds)
    if args.tune:
        from radflow.components.train.tuning import tune

        config, score = tune(args.examples, args.out, balance, config, max_trials=args.tune)
        print(f"best of {args.tune} trials (val_auc={score:.4f}): {asdict(config)}")
    result = train(args.examples, args.out, balance, config)
    print(json.dumps(asdict(result), indent=2))
    print(f"val_auc={result.best_val_auc}")  # the line Katib's StdOut metrics collector reads
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from radflow.components.evaluate.evaluate import evaluate
    from radflow.components.evaluate.model_card import MODEL_CARD_FILE

    config = _stage_config(args, "evaluate")
    result = evaluate(args.model, args.examples, args.out, config, serving_root=args.serving_root,
                      model_name=_stage_config(args, "push").model_name, validation_dir=args.validation)
    for name, value in result.metrics.items():
        low, high = result.intervals.get(name, (None, None))
        print(f"{name:>18} {value:.4f}" + (f"  [{low:.4f}, {high:.4f}]" if low is not None else ""))
    print("decision: the highest score (argmax)" if result.threshold is None else
          f"threshold: {result.threshold:.4f}. {result.operating_point.sentence(config.ci_level)}")
    print(f"blessed: {result.blessing.blessed}\n{result.blessing.reason}")
    print(f"model card: {os.path.join(args.out, MODEL_CARD_FILE)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from radflow.components.evaluate.compare import compare, format_comparison

    result = compare(args.a, args.b, args.examples or "", args.out or "", _stage_config(args, "evaluate"))
    print(format_comparison(result))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from radflow.components.push.push import push

    result = push(args.model, args.blessing, args.serving_root, _stage_config(args, "push"),
                  statistics_dir=args.statistics, run_id=args.run_id)
    print(result.to_json())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from radflow.components.push.push import SUMMARY_METRICS, list_versions

    model_name = _stage_config(args, "push").model_name
    infos = list_versions(args.serving_root, model_name)
    if not infos:
        print(f"no versions under {os.path.join(args.serving_root, model_name)}")
        return 0
    header = "  ".join(f"{m:>11}" for m in SUMMARY_METRICS)
    print(f"{'version':>7}  {'':4}  {'pushed_at':25}  {'threshold':>9}  {header}  lineage")
    for i in infos:
        metrics = "  ".join(f"{i.metrics[m]:>11.4f}" if m in i.metrics else f"{'-':>11}" for m in SUMMARY_METRICS)
        threshold = f"{i.threshold:>9.4f}" if i.threshold is not None else f"{'-':>9}"
        lineage = f"rollback of {i.rollback_of}" if i.rollback_of else f"parent {i.parent_version}"
        print(f"{i.version:>7}  {'live' if i.live else '':4}  {i.pushed_at:25}  {threshold}  {metrics}  {lineage}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from radflow.components.push.push import rollback

    result = rollback(args.serving_root, args.to, _stage_config(args, "push"), run_id=args.run_id)
    if not result.pushed:
        print(f"rollback refused: {result.reason}", file=sys.stderr)
        return 1
    print(f"version {result.version} now serves the model of version {args.to} ({result.path})")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from radflow.pipeline.compile import compile_pipeline
    from radflow.pipeline.config import load_config

    print(f"wrote {compile_pipeline(load_config(args.config), args.out)}")
    return 0


def _check_data(data: str, given: bool) -> str | None:
    """Why `data` cannot be ingested, in one line, or None; cheap, so it runs before any heavy import.

    Args:
        data: the run's data folder (or CSV manifest, or gs:// prefix: not checked here).
        given: the path came from --data or a config, not from the default.
    """
    import difflib

    if "://" in data:
        return None
    if os.path.isfile(data):
        return None if data.endswith(".csv") else (f"--data {data}: is a file; expected an image folder (split "
                                                   "folders or class folders) or a CSV manifest")
    if not os.path.isdir(data):
        if not given:
            return (f"no data at {data}: `make sample` (or `radflow synth {data}`) writes the synthetic sample "
                    "there, or pass --data DIR")
        parent = os.path.dirname(os.path.abspath(data))
        near = difflib.get_close_matches(os.path.basename(data.rstrip(os.sep)),
                                         os.listdir(parent) if os.path.isdir(parent) else [], n=1)
        hint = f"; did you mean {os.path.join(os.path.dirname(data), near[0])}?" if near else ""
        return f"--data {data}: no such folder{hint}"
    for _, _, files in os.walk(data):
        if any(not f.startswith(".") for f in files):
            return None
    return (f"--data {data}: holds no files; expected split folders (train|val|test/<class>/...) or class "
            "folders (<class>/...) of images")


def cmd_run(args: argparse.Namespace) -> int:
    # Arguments, paths and the whole config are checked before TensorFlow and kfp are imported, so a
    # mistake is answered in a fraction of a second.
    import dataclasses

    from radflow.pipeline.config import PipelineConfig, load_config
    from radflow.pipeline.run import resume_config

    if args.resume:
        given = [f for f in ("config", "data", "schema", "patient_id_pattern") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--resume reruns the interrupted run's own config; drop --{given[0].replace('_', '-')}")
        config = resume_config(args.resume)
        config = dataclasses.replace(config, **{k: v for k, v in (("serving_root", args.serving_root),
                                                                  ("pipeline_root", args.pipeline_root)) if v})
    else:
        config = load_config(args.config, data=args.data, serving_root=args.serving_root,
                             pipeline_root=args.pipeline_root)
        ingest = dataclasses.replace(
            config.ingest, allow_image_level_splits=args.allow_image_level_splits or
            config.ingest.allow_image_level_splits,
            **({} if args.patient_id_pattern is None else {"patient_id_pattern": args.patient_id_pattern}))
        validate = dataclasses.replace(config.validate, **_schema_fields(args.schema))
        config = dataclasses.replace(config, ingest=ingest, validate=validate)
    problem = _check_data(config.data, given=bool(args.data or args.resume) or config.data != PipelineConfig().data)
    weights = config.train.weights
    if not problem and weights.lower() != "none" and "://" not in weights and not os.path.isfile(weights):
        problem = (f"train.weights: {weights}: no such file (radflow never downloads weights; "
                   "configs/transfer_learning.yaml says how to make a no-top weights file once)")
    if problem:
        print(f"radflow run: error: {problem}", file=sys.stderr)
        return 2
    if args.resume:
        print(f"radflow run: resuming {args.resume}: train goes on from its saved state; the other stages run again")

    from radflow.pipeline.progress import shown
    from radflow.pipeline.run import RunInterrupted, TaskFailed, run_local, validation_reports

    try:
        result = _interruptible(lambda: run_local(config, sys.stdout, verbose=args.verbose))
    except TaskFailed as failed:
        for i, line in enumerate(failed.reason or [f"see {shown(failed.log)}"]):
            print(f"radflow run: {failed.task} failed: {line}" if i == 0 else f"  {line}", file=sys.stderr)
        reports = validation_reports(failed.run_dir) if failed.task == "validation-gate" else []
        if reports:
            print(f"radflow run: validate's reports: {', '.join(shown(r) for r in reports)}", file=sys.stderr)
        print(f"radflow run: {failed.advice or 'its whole log: ' + shown(failed.log)}", file=sys.stderr)
        return 1
    except RunInterrupted as stop:
        print(_interrupted_line(stop, config), file=sys.stderr)
        return 130
    _print_summary(result)
    return 0


def _interruptible(run):
    """Calls run() with SIGTERM turned into KeyboardInterrupt, so a stopped run stops its tasks too."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return run()
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_line(stop, config) -> str:
    """The one line a stopped run prints: what stopped, where the partial run is, what was pushed, what next."""
    from radflow.pipeline.progress import shown

    where = f"; the partial run is in {shown(stop.run_dir)}" if stop.run_dir else ""
    if stop.pushed_version is not None:
        pushed = f"; it had already pushed version {stop.pushed_version}"
    else:
        pushed = "; nothing was pushed"
    if stop.resumable_epoch:
        after = (f"; `radflow run --resume {shown(stop.run_dir)}` goes on from train's state after "
                 f"epoch {stop.resumable_epoch}")
    else:
        after = "; a rerun starts over"
    return f"radflow run: interrupted during {stop.task or 'start-up'}{where}{pushed}{after}"


def _print_summary(result) -> None:
    from radflow.components.ingest.ingest import INGESTED, read_manifest
    from radflow.pipeline.progress import shown
    from radflow.serving.predict import predict_files

    print("\n== radflow run finished ==")
    print("test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if k != "num_examples"))
    print(f"blessed: {result.blessing.blessed} ({result.blessing.reason})")
    if not result.pushed["pushed"]:
        print(f"not pushed: {result.pushed['reason']}")
        return
    print(f"pushed version {result.pushed['version']} to {shown(result.pushed['path'])}")
    test = [r for r in read_manifest(result.examples_dir) if r["split"] == "test" and r["state"] == INGESTED]
    predictions = predict_files(result.pushed["path"], [r["path"] for r in test])
    by_class: dict[str, list] = {}
    for row, pred in zip(test, predictions, strict=True):
        by_class.setdefault(row["label"], []).append(pred)
    right = ", ".join(f"{label} {sum(p.decision == label for p in preds)} of {len(preds)}"
                      for label, preds in sorted(by_class.items()))
    print(f"served version {result.pushed['version']} on the test images, called right per class: {right}")
    for label, preds in sorted(by_class.items()):  # one typical image per class: its class's median score
        pred = sorted(preds, key=lambda p: p.scores[label])[len(preds) // 2]
        scores = ", ".join(f"{k}={v:.3f}" for k, v in pred.scores.items())
        how = f"at threshold {pred.threshold:.3f}" if pred.threshold is not None else "by the highest score"
        print(f"a typical test {label} image (median {label} score), {shown(pred.path)}: {pred.decision} {how} "
              f"({scores})")


def cmd_capacity(args: argparse.Namespace) -> int:
    from radflow.pipeline.capacity import capacity
    from radflow.pipeline.config import load_config

    config = load_config(args.config)
    found = capacity(config, args.katib_parallel_trials)
    c = config.cluster
    print(f"GPU pool: {found.pool} ({c.gpu_pool_nodes} nodes x {c.gpus_per_node}); GPU serving holds up to "
          f"{c.serving_gpus}; {found.free} left")
    print(f"pipeline at its peak: {found.pipeline}; Katib ({args.katib_parallel_trials} parallel trials): "
          f"{found.katib}")
    for line in found.errors:
        print(f"error: {line}")
    for line in found.warnings:
        print(f"warning: {line}")
    return 1 if found.errors or found.warnings else 0


def _kfp_session(args: argparse.Namespace):
    """The KFP session of the connection flags, with the KF_PIPELINES_* variables as their defaults."""
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH

    from radflow.pipeline.auth import Connection, connect

    host = args.host or os.environ.get("KF_PIPELINES_ENDPOINT", "")
    if not host:
        raise ValueError("no KFP endpoint: pass --host or set KF_PIPELINES_ENDPOINT")
    sa_token = args.sa_token
    if sa_token == "":  # --sa-token without a path: kfp's projected-token location
        sa_token = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    token = args.existing_token or os.environ.get("KF_PIPELINES_TOKEN", "")
    cookies = args.cookies or os.environ.get("KF_PIPELINES_COOKIES", "")
    return connect(Connection(host, args.namespace or "", token, sa_token or "", cookies, args.ssl_ca_cert or ""))


def _run_source(args: argparse.Namespace, session, tmp: str):
    """(compiled package or None, run parameters, uploaded version or None) for submit and schedule."""
    from radflow.pipeline.compile import compile_pipeline
    from radflow.pipeline.config import load_config
    from radflow.pipeline.submit import parse_params
    from radflow.pipeline.upload import resolve

    config = load_config(args.config)
    params = parse_params(args.param, config)
    if args.pipeline_version:
        return None, params, resolve(session.client, args.pipeline, args.pipeline_version, session.namespace)
    return compile_pipeline(config, os.path.join(tmp, "radflow.yaml")), params, None


def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    from radflow.pipeline.auth import api_errors
    from radflow.pipeline.submit import RunFailed, pod_reader, run_url, submit, wait_for_run

    session = _kfp_session(args)
    with tempfile.TemporaryDirectory() as tmp, api_errors(session.host):
        package, params, version = _run_source(args, session, tmp)
        run_id = submit(session.client, package, params, args.experiment, args.run_name, args.pipeline_root,
                        args.service_account, namespace=session.namespace, version=version)
    print(f"run id: {run_id}")
    print(f"run: {run_url(session.host, run_id)}")
    if not args.wait:
        return 0
    try:
        with api_errors(session.host):
            wait_for_run(session.client, run_id, args.timeout, unschedulable_after_s=args.unschedulable_after,
                         read_pod=pod_reader(session.namespace or args.namespace or "kubeflow"),
                         on_change=lambda line: print(f"  {line}", flush=True))
    except (RunFailed, TimeoutError) as err:
        print(f"radflow submit: {err}", file=sys.stderr)
        return 1
    print(f"run {run_id} succeeded")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    import tempfile

    from radflow.pipeline.auth import api_errors
    from radflow.pipeline.schedule import delete_schedule, list_schedules, schedule

    if not (args.list or args.delete or args.cron):
        print("radflow schedule: error: --cron is required to create a schedule (or use --list / --delete NAME)",
              file=sys.stderr)
        return 2
    session = _kfp_session(args)
    with api_errors(session.host):
        if args.list:
            for r in list_schedules(session.client, namespace=session.namespace):
                cron = r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else "-"
                print(f"{r.display_name}\t{cron}\t{r.status or r.mode}\t{r.recurring_run_id}")
            return 0
        if args.delete:
            deleted = delete_schedule(session.client, args.delete, session.namespace)
            print(f"deleted {deleted} recurring run(s) named {args.delete!r}")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            package, params, version = _run_source(args, session, tmp)
            r = schedule(session.client, package, args.name, args.cron, params, args.experiment, args.pipeline_root,
                         args.service_account, namespace=session.namespace, version=version)
    print(f"recurring run {r.display_name!r} ({r.recurring_run_id}): cron '{args.cron}', one run at a time, "
          "no catch-up" + (f", pipeline version {version.name}" if version else ""))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    import tempfile

    from radflow.pipeline.auth import api_errors
    from radflow.pipeline.compile import compile_pipeline
    from radflow.pipeline.config import load_config
    from radflow.pipeline.upload import upload, version_url

    session = _kfp_session(args)
    with tempfile.TemporaryDirectory() as tmp, api_errors(session.host):
        package = compile_pipeline(load_config(args.config), os.path.join(tmp, "radflow.yaml"))
        version = upload(session.client, package, args.pipeline, session.namespace)
    print(f"pipeline {args.pipeline!r} version {version.name}: {'uploaded' if version.uploaded else 'already there'}"
          f" (id {version.version_id})")
    print(f"pipeline: {version_url(session.host, version)}")
    print(f"run it: radflow submit --pipeline-version {version.name} ...")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from radflow.pipeline.auth import api_errors
    from radflow.pipeline.runs import cancel, describe_run, list_runs

    session = _kfp_session(args)
    with api_errors(session.host):
        if args.runs_command == "list":
            for r in list_runs(session.client, session.namespace, args.experiment, args.limit):
                print(f"{r.run_id}\t{r.state}\t{r.created_at}\t{r.display_name}")
        elif args.runs_command == "get":
            print("\n".join(describe_run(session.client.get_run(args.run_id), session.host)))
        else:
            print(f"cancelling run {args.run_id} (was {cancel(session.client, args.run_id).state})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from radflow.serving.server import config_from_args, serve

    serve(*config_from_args(args))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import grpc
    import requests

    from radflow.serving.client import ServingClient

    try:
        with ServingClient(args.server, args.model, version=args.version, label=args.label, rest=args.rest,
                           tls=args.tls, ca_cert=args.ca_cert) as client:
            predictions = client.predict_files(args.images)
    except grpc.RpcError as err:
        print(f"radflow predict: {args.server} answered {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except requests.RequestException as err:
        print(f"radflow predict: {args.server}: {err}", file=sys.stderr)
        return 1
    for p in predictions:
        scores = ", ".join(f"{k}={v:.3f}" for k, v in p.scores.items())
        version = f" [version {p.version}]" if p.version else ""
        how = f"at threshold {p.threshold:.3f}" if len(p.scores) == 2 else "by the highest score"
        print(f"{p.path}: {p.decision} {how} ({scores}){version}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from radflow.pacs.connection import PacsConfig
    from radflow.serving.review.app import serve_review
    from radflow.serving.review.config import ReviewConfig

    base = args.model_base_path or os.path.join("models", args.model)
    pacs = PacsConfig(args.pacs, credentials_file=args.pacs_credentials or "",
                      ca_file=args.pacs_ca_file or "") if args.pacs else None
    serve_review(ReviewConfig(server=args.server, model_base_path=base, model_name=args.model, port=args.port,
                              save_uploads=args.save_uploads, timeout_s=args.timeout, pacs=pacs))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from radflow.pacs.connection import PacsConfig
    from radflow.pacs.router import RouteConfig, describe, existing_ledger, parse_filter, parse_seconds, route

    if args.status:
        print("\n".join(describe(args.state)))
        return 0
    if args.retry_failed:
        print(f"{existing_ledger(args.state).requeue_failed()} failed instances are pending again")
        return 0
    if not (args.pacs and args.serving):
        print("radflow route: error: --pacs and --serving are required", file=sys.stderr)
        return 2
    pacs = PacsConfig(args.pacs, credentials_file=args.pacs_credentials or "", ca_file=args.pacs_ca_file or "")
    router = route(RouteConfig(
        pacs=pacs, serving=args.serving, model_name=args.model, model_base_path=args.model_base_path or "",
        state_dir=args.state, poll_s=parse_seconds(args.poll), filter=parse_filter(args.filter), since=args.since or "",
        lookback_days=args.lookback_days,
        workers=args.workers, queue_size=args.queue_size, max_pending=args.max_pending,
        max_attempts=args.max_attempts, retry_backoff_s=parse_seconds(args.retry_backoff),
        serving_ca_cert=args.serving_ca_cert or "", **({"disclaimer": args.disclaimer} if args.disclaimer else {})),
        once=args.once)
    print(f"answered {router.stats.answered}; ledger {router.ledger.counts()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="FILE", help="YAML config; its sections override the defaults "
                       "(see docs/configuration.md and configs/)")
        return p

    p = add("synth", cmd_synth, "write a synthetic chest X-ray set in Kaggle's layout",
            "Writes OUT/{train,val,test}/{NORMAL,PNEUMONIA}/ with Kaggle-style names (several images per\n"
            "patient), a ~1:3 class mix, varied sizes and a few undecodable files. Deterministic per seed.\n\n"
            "example: radflow synth data/sample --n 800")
    p.add_argument("out", metavar="OUT", help="directory to create")
    p.add_argument("--n", type=int, default=800, help="number of image files (default 800)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = with_config(add("run", cmd_run, "run the whole pipeline locally under kfp.local",
                        "Runs ingest -> validate -> class_balance -> train -> evaluate -> push with kfp.local's\n"
                        "SubprocessRunner, one line per stage (on a terminal with live progress), then prints the\n"
                        "metrics, the pushed version and one prediction made through the pushed model's\n"
                        "serving_default signature. Everything each task prints is kept in RUN/logs/<task>.log;\n"
                        "--verbose streams it instead. Ctrl-C stops the run and says whether --resume can go on.\n\n"
                        "example: radflow run --local --data data/sample --serving-root models\n"
                        "         radflow run --data data/brain_mri --config configs/brain_mri_4class.yaml\n"
                        "         radflow run --resume runs/radflow-2026-12-01-10-00-00-000000"))
    p.add_argument("--local", action="store_true", default=True,
                   help="run on this machine with kfp.local (the default, and for now the only mode here)")
    p.add_argument("--data", help="image folder (Kaggle or class-per-folder layout); default from config")
    p.add_argument("--serving-root", help="TF Serving model base directory; default from config ('models')")
    p.add_argument("--pipeline-root", help="where task outputs are kept; default from config ('runs')")
    p.add_argument("--patient-id-pattern", metavar="REGEX|PRESET", help="ingest.patient_id_pattern: where the "
                   "patient is in each path (see radflow ingest --help)")
    p.add_argument("--allow-image-level-splits", action="store_true", help="ingest.allow_image_level_splits")
    p.add_argument("--schema", metavar="infer|NAME|FILE", help="validate against a schema inferred from train "
                   "(infer: for labels other than the chest X-ray schema's), a curated schema NAME, or a .pbtxt FILE")
    p.add_argument("--resume", metavar="RUN_DIR", help="rerun an interrupted run with its own config; train goes on "
                   "from the state it saved there")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="stream every task's output (kfp.local's, TensorFlow's, Keras') instead of one line per "
                        "stage; the logs are kept as well")

    p = with_config(add("compile", cmd_compile, "compile the pipeline to KFP YAML",
                        "Writes the KFP v2 pipeline spec that a Kubeflow cluster runs. Config values become\n"
                        "the parameters' defaults.\n\nexample: radflow compile --out radflow.yaml"))
    p.add_argument("--out", default="radflow.yaml", help="output file (default radflow.yaml)")

    p = with_config(add("ingest", cmd_ingest, "images -> TFRecord examples, patient-split, with a manifest",
                        "Decodes every file under SOURCE, quarantines the unreadable ones with a reason,\n"
                        "deduplicates identical images and writes OUT/{train,val,test}/*.tfrecord,\n"
                        "OUT/manifest.csv (one row per input) and, last, OUT/metadata.json.\n"
                        "JPEG, PNG (8/16-bit) and DICOM; --beam-args go to the Beam runner as they are.\n\n"
                        "example: radflow ingest data/sample runs/examples --image-size 128\n"
                        "         radflow ingest labels.csv runs/examples   (CSV: path,label[,patient_id][,split])\n"
                        "         radflow ingest gs://b/cxr gs://b/examples --runner DataflowRunner \\\n"
                        "             --beam-args='--project=p --region=r --sdk_container_image=radflow:0.1.0'"))
    p.add_argument("source", metavar="SOURCE",
                   help="folder or gs:// prefix (Kaggle or class-per-folder layout), or a CSV manifest")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--image-size", type=int, help="stored image size (default 224)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="stored channels (default 1)")
    p.add_argument("--resize-policy", choices=("pad", "crop"), help="pad to square (default) or centre crop")
    p.add_argument("--official-splits", choices=("merge_val", "keep", "resplit"),
                   help="use of a layout's own splits (default merge_val: keep test, carve val from train+val)")
    p.add_argument("--runner", help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner")
    p.add_argument("--patient-key-secret-file", help="file holding the patient-key secret (never stored with data)")
    p.add_argument("--patient-id-pattern", metavar="REGEX|PRESET",
                   help="where the patient is: a regex with one group searched in each path relative to SOURCE, "
                        "e.g. '(?:^|/)covid_(p\\d+)_', or a preset: kaggle_chest_xray (default), nih_chestxray14, "
                        "chexpert, mimic_cxr")
    p.add_argument("--allow-image-level-splits", action="store_true",
                   help="go on when most files have no patient id (each is then its own patient; recorded as a "
                        "limitation)")
    p.add_argument("--beam-args", metavar="'--opt=v ...'", help="Beam pipeline options, passed through (use =)")
    p.add_argument("--labels", metavar="CSV", help="for a dicomweb+http(s):// SOURCE: label per StudyInstanceUID or "
                   "AccessionNumber (columns label and either; optional split); see docs/pacs.md")
    p.add_argument("--pacs-credentials", metavar="PATH", help="PACS credentials: a mounted Kubernetes Secret folder "
                   "(username+password, or token) or a file of 'key: value' lines; never in the URL")
    p.add_argument("--pacs-ca-file", metavar="PEM", help="CA of the PACS's https certificate (default: system CAs)")

    p = with_config(add("validate", cmd_validate, "TFDV statistics, schema, drift and skew per split",
                        "Profiles every split with TFDV, validates it against the curated schema\n"
                        "(pipeline/schema/<schema_name>.pbtxt, else one inferred from train), compares train with\n"
                        "the last blessed run's train (drift) and val/test with train (skew). Exits 1 with every\n"
                        "blocking finding listed by split and feature; writes OUT/statistics.html.\n\n"
                        "example: radflow validate runs/examples runs/validation --serving-root models"))
    p.add_argument("examples", metavar="EXAMPLES", help="an ingest output")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--schema", metavar="infer|NAME|FILE", help="infer a schema from train (infer), or validate "
                   "against the curated schema NAME or a .pbtxt FILE (default: validate.schema_name, chest_xray)")
    p.add_argument("--serving-root", help="find the drift baseline in the highest version published here")
    p.add_argument("--baseline", metavar="STATS", help="a train statistics .pb to check drift against instead")

    p = add("schema", cmd_schema_freeze, "curated schemas: radflow schema freeze RUN",
            "Curated TFDV schemas live in pipeline/schema/ and ship with the image.")
    schema_sub = p.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    p = schema_sub.add_parser(
        "freeze", help="copy a run's schema into pipeline/schema/<name>.pbtxt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Copies the schema a finished validate run wrote (RUN is that output, or a pipeline run\n"
                    "directory holding one) into the repository as the curated schema NAME. Later runs with\n"
                    "--schema NAME (validate.schema_name: NAME) validate against it; edit it by hand. An\n"
                    "existing schema, such as the shipped chest_xray, is only replaced with --force.\n\n"
                    "example: radflow schema freeze runs/radflow-2026-01-01-12-00-00-000000 --name brain_mri")
    p.add_argument("run", metavar="RUN", help="a validate output, or a pipeline run directory")
    p.add_argument("--name", required=True, help="curated schema name, e.g. brain_mri")
    p.add_argument("--dir", default=None, help="write NAME.pbtxt here instead of the repository's pipeline/schema "
                   "(runs then use it with --schema DIR/NAME.pbtxt)")
    p.add_argument("--force", action="store_true", help="replace an existing schema of that name")

    p = add("config", cmd_config, "check config files, or print the configuration reference",
            "check FILE...: loads each file as `radflow run --config` would and names every problem by\n"
            "line, column and option. reference: the Markdown page docs/configuration.md, generated\n"
            "from the config dataclasses (every option with its type, bounds, default and meaning).\n\n"
            "example: radflow config check configs/*.yaml\n"
            "         radflow config reference > docs/configuration.md")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser("check", help="check config files").add_argument("files", metavar="FILE", nargs="+")
    config_sub.add_parser("reference", help="print docs/configuration.md")

    p = with_config(add("class-balance", cmd_class_balance, "class counts, weights, initial bias, strategy",
                        "Counts per class and split, the imbalance ratio, class weights n/(K*n_c), the initial\n"
                        "output bias, a recommendation, and the strategy train applies.\n\n"
                        "example: radflow class-balance runs/examples runs/class_balance --strategy oversample"))
    p.add_argument("examples", metavar="EXAMPLES", help="an ingest output")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--strategy", choices=STRATEGIES, help="how train handles imbalance (default class_weights)")

    p = with_config(add("train", cmd_train, "train and export the baseline CNN or a backbone",
                        "Trains under the machine's tf.distribute strategy (TF_CONFIG with several tasks:\n"
                        "multi-worker; give each worker its own OUT) and exports OUT/saved_model\n"
                        "(serving_default takes encoded image bytes) beside OUT/model.keras. Killed and\n"
                        "rerun with the same OUT (or backup_dir), it resumes from its last finished epoch.\n\n"
                        "example: radflow train runs/examples runs/model --class-balance runs/class_balance\n"
                        "         radflow train runs/examples runs/model --model mobilenet_v2 "
                        "--weights mobilenet_v2.weights.h5\n"
                        "         radflow train runs/examples runs/model --cv-folds 5\n"
                        "         radflow train runs/examples runs/model --tune 8"))
    p.add_argument("examples", metavar="EXAMPLES", help="an ingest output")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--class-balance", metavar="DIR", help="a class-balance output (default: compute it now)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--model", help="baseline_cnn or a backbone (mobilenet_v2, efficientnet_b0, resnet50, ...)")
    p.add_argument("--weights", help="backbone weights: none, or a weights file (local or gs://); never downloaded")
    p.add_argument("--learning-rate", type=float, help="phase 1 step size")
    p.add_argument("--dropout", type=float, help="dropout of the head")
    p.add_argument("--unfreeze-layers", type=int, help="backbone layers unfrozen for fine-tuning")
    p.add_argument("--cv-folds", type=int, help="patient-grouped stratified k-fold over train+val first")
    p.add_argument("--tune", type=int, metavar="TRIALS", help="KerasTuner search over the declared space first, "
                   "then train with the best")

    p = with_config(add("evaluate", cmd_evaluate, "threshold, test metrics with CIs, and the blessing",
                        "Chooses the operating threshold on the val split, scores the test split through the\n"
                        "exported serving_default signature, bootstraps 95% CIs over patients, compares with the\n"
                        "production model under --serving-root, and writes metrics.json, canary.json, plots,\n"
                        "model_card.html and blessing.json.\n\n"
                        "example: radflow evaluate runs/model runs/examples runs/eval --serving-root models"))
    p.add_argument("model", metavar="MODEL", help="a train output")
    p.add_argument("examples", metavar="EXAMPLES", help="an ingest output")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--serving-root", help="compare with the highest version here (default: no comparison)")
    p.add_argument("--validation", metavar="DIR", help="a validate output: its shortcut findings go into the "
                   "model card and the blessing")

    p = with_config(add("compare", cmd_compare, "two models on the same test images: is the difference real?",
                        "Scores A and B (each a run directory runs/radflow-<time>, a train or evaluate output,\n"
                        "or a pushed version models/radflow/<n>) on one examples directory's test split, each at\n"
                        "its own operating point, and prints the metrics side by side with the paired\n"
                        "patient-bootstrap CI of each difference, DeLong's test of the two ROC AUCs (binary),\n"
                        "and the settings that differ. --out writes compare.json.\n\n"
                        "example: radflow compare runs/radflow-2026-12-01-10-00-00 models/radflow/3"))
    p.add_argument("a", metavar="A", help="model A: run directory, train/evaluate output, or pushed version")
    p.add_argument("b", metavar="B", help="model B, the same kinds")
    p.add_argument("--examples", metavar="DIR", help="score both on this ingest output's test split "
                   "(default: the one A was evaluated on)")
    p.add_argument("--out", metavar="DIR", help="write compare.json here")

    p = with_config(add("push", cmd_push, "publish a blessed, infra-validated model as the next TF Serving version",
                        "Stages MODEL/saved_model with the threshold BLESSING chose and its lineage, loads it in a\n"
                        "separate process to answer canary requests, and only then publishes it atomically as\n"
                        "SERVING_ROOT/<model_name>/<next version>/; keeps the newest push.keep_versions.\n\n"
                        "example: radflow push runs/model runs/eval models --statistics runs/validation"))
    p.add_argument("model", metavar="MODEL", help="a train output")
    p.add_argument("blessing", metavar="BLESSING", help="an evaluate output holding blessing.json")
    p.add_argument("serving_root", metavar="SERVING_ROOT", help="TF Serving model base directory or gs:// prefix")
    p.add_argument("--statistics", metavar="DIR", help="a validate output; its train statistics go with the version")
    p.add_argument("--run-id", default="", help="recorded in the version's lineage")

    p = with_config(add("models", cmd_models, "list the pushed versions and which one is served",
                        "Lists SERVING_ROOT/<model_name>/<version>/ with each version's threshold, headline test\n"
                        "metrics and lineage. TF Serving serves the highest version: that one is marked live.\n\n"
                        "example: radflow models models"))
    p.add_argument("serving_root", metavar="SERVING_ROOT", help="TF Serving model base directory or gs:// prefix")

    p = with_config(add("rollback", cmd_rollback, "serve an earlier version again",
                        "Re-publishes version VERSION as a new highest version (TF Serving's default policy\n"
                        "serves the highest), after infra-validating the copy; nothing is deleted, and the new\n"
                        "version's lineage records rollback_of.\n\n"
                        "example: radflow rollback models --to 3"))
    p.add_argument("serving_root", metavar="SERVING_ROOT", help="TF Serving model base directory or gs:// prefix")
    p.add_argument("--to", type=int, required=True, metavar="VERSION", help="the version to serve")
    p.add_argument("--run-id", default="rollback", help="recorded in the new version's lineage")

    p = with_config(add("capacity", cmd_capacity, "check the parallel GPU demand against the GPU pool",
                        "Adds up the GPUs the pipeline (train, its fold tasks, a TFJob's workers), a Katib search\n"
                        "and GPU serving (cluster.serving_gpus) ask for at once, against the pool the cluster\n"
                        "section describes (gpu_pool_nodes x gpus_per_node); exits 1 when something does not fit.\n\n"
                        "example: radflow capacity --config gke.yaml"))
    from radflow.pipeline.capacity import KATIB_PARALLEL_TRIALS

    p.add_argument("--katib-parallel-trials", type=int, default=KATIB_PARALLEL_TRIALS,
                   help=f"parallel trials of the Katib search (default {KATIB_PARALLEL_TRIALS}, as generated)")

    def with_kfp(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--host", help="KFP API endpoint, e.g. http://localhost:8080 or "
                       "https://kubeflow.example.com/pipeline (default: $KF_PIPELINES_ENDPOINT)")
        p.add_argument("--namespace", help="Kubeflow profile (namespace) on a multi-user KFP (default: kfp's "
                       "context, or the pod's namespace); the steps' pods run there (single-user: kubeflow)")
        p.add_argument("--existing-token", metavar="TOKEN", help="bearer token, e.g. from `kubectl create token "
                       "default-editor -n PROFILE --audience pipelines.kubeflow.org` (default: $KF_PIPELINES_TOKEN)")
        p.add_argument("--sa-token", nargs="?", const="", metavar="PATH", help="in a pod: a projected "
                       "service-account token, re-read on every request (default path: "
                       "$KF_PIPELINES_SA_TOKEN_PATH or /var/run/secrets/kubeflow/pipelines/token)")
        p.add_argument("--cookies", metavar="'NAME=VALUE'", help="session cookie of a Kubeflow login through "
                       "Dex/oauth2-proxy, e.g. 'oauth2_proxy_kubeflow=...' (default: $KF_PIPELINES_COOKIES)")
        p.add_argument("--ssl-ca-cert", metavar="PEM", help="CA certificate of an https endpoint")
        return p

    def with_run(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_kfp(p)
        p.add_argument("--experiment", default="radflow", help="KFP experiment (created if missing)")
        p.add_argument("--param", action="append", default=[], metavar="K=V",
                       help="run parameter: data=..., serving_root=..., or <stage>.<field>=<YAML value> "
                            "(e.g. train.epochs=10); repeatable")
        p.add_argument("--pipeline-root", help="where the run's artifacts go, e.g. gs://bucket/runs "
                       "(default: the KFP deployment's)")
        p.add_argument("--service-account", help="Kubernetes service account of the steps "
                       "(default: KFP's pipeline-runner; default-editor in a Kubeflow profile)")
        p.add_argument("--pipeline", default="radflow", help="uploaded pipeline name (with --pipeline-version)")
        p.add_argument("--pipeline-version", metavar="NAME", help="run this uploaded version (`radflow upload` "
                       "prints its name) instead of compiling the config inline")
        return p

    p = with_config(with_run(add("submit", cmd_submit, "compile the pipeline and run it on a KFP cluster",
                                 "Compiles the pipeline (cluster settings from the config's `cluster:` section),\n"
                                 "or takes an uploaded version, submits a run and prints its id and UI link. --wait\n"
                                 "follows it to the end and exits 1 naming the step that failed and why, including\n"
                                 "a step no node can take (a step waiting for an autoscaler's node just waits).\n\n"
                                 "example: radflow submit --host http://localhost:8080 --param data=gs://b/x --wait\n"
                                 "         radflow submit --host https://kf.example.com/pipeline --namespace xray \\\n"
                                 "             --cookies \"oauth2_proxy_kubeflow=$COOKIE\" \\\n"
                                 "             --pipeline-version 0.1.0-3f2a9c81d0e4")))
    p.add_argument("--run-name", help="run display name (default: radflow <UTC time>)")
    p.add_argument("--wait", action="store_true", help="follow the run; exit non-zero unless it succeeds")
    p.add_argument("--timeout", type=float, default=86400, help="--wait gives up after this many seconds")
    p.add_argument("--unschedulable-after", type=float, default=900,
                   help="--wait fails a step that no node could take for this many seconds when no cluster "
                        "autoscaler says more (default 900)")

    p = with_config(with_run(add("schedule", cmd_schedule, "scheduled retraining: recurring runs on a KFP cluster",
                                 "Creates a recurring run (one run at a time, no catch-up); an existing one of\n"
                                 "the same name is replaced. --list shows them, --delete NAME removes one.\n\n"
                                 "example: radflow schedule --host http://localhost:8080 --cron '0 0 3 * * 0'")))
    p.add_argument("--cron", help="six fields, seconds first: '0 0 3 * * 0' is Sundays at 03:00")
    p.add_argument("--name", default="radflow-retrain", help="schedule name (default radflow-retrain)")
    p.add_argument("--list", action="store_true", help="list the recurring runs")
    p.add_argument("--delete", metavar="NAME", help="delete the recurring run(s) of this name")

    p = with_config(with_kfp(add("upload", cmd_upload, "register the compiled pipeline as a KFP pipeline version",
                                 "Compiles the config and uploads it as a version of pipeline --pipeline (created if\n"
                                 "missing; in the --namespace profile on a multi-user KFP), named\n"
                                 "<radflow version>-<spec digest>: the same release and config map to one version,\n"
                                 "so uploading again changes nothing. submit/schedule --pipeline-version run it.\n\n"
                                 "example: radflow upload --host http://localhost:8080 --config gke.yaml")))
    p.add_argument("--pipeline", default="radflow", help="pipeline name in the KFP UI (default radflow)")

    p = add("runs", cmd_runs, "list, inspect or cancel runs on a KFP cluster",
            "list: the newest runs; get RUN_ID: the run's state, each step's state and a failed step's\n"
            "message; cancel RUN_ID: terminate a pending or running run.\n\n"
            "example: radflow runs get 8f2c... --host http://localhost:8080")
    runs_sub = p.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = with_kfp(runs_sub.add_parser("list", help="the newest runs"))
    p.add_argument("--experiment", help="only this experiment's runs")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    for action, what in (("get", "a run's steps and why it failed"), ("cancel", "terminate a run")):
        p = with_kfp(runs_sub.add_parser(action, help=what))
        p.add_argument("run_id", metavar="RUN_ID")

    from radflow.serving.flags import add_arguments as add_serve_arguments

    p = add("serve", cmd_serve, "a TF-Serving-compatible model server (gRPC 8500, REST 8501) for local use",
            "Serves pushed versions with TF Serving's gRPC and REST protocols and flags: new versions\n"
            "are loaded as they appear, warmed up, and swapped in without failing requests. Readiness:\n"
            "GET /readyz or grpc.health.v1. Stops gracefully on SIGTERM/SIGINT.\n\n"
            "example: radflow serve --model_name radflow --model_base_path models/radflow")
    add_serve_arguments(p)

    p = add("predict", cmd_predict, "classify images through TF Serving or radflow serve",
            "Sends JPEG, PNG or DICOM files (DICOM rendered as ingest does) to a model server and prints\n"
            "each image's class, scores and the decision at the model's operating threshold. Works\n"
            "against tensorflow_model_server too.\n\n"
            "example: radflow predict chest.png study.dcm --server localhost:8500 --label stable")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG, DICOM), local or gs://")
    p.add_argument("--server", default="localhost:8500", help="HOST:PORT (gRPC, or REST with --rest)")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    p.add_argument("--model", default="radflow", help="model name (default radflow)")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--version", type=int, help="ask for this version (default: the latest served)")
    pin.add_argument("--label", help="ask for the version with this label, e.g. stable or canary")
    p.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's CAs")
    p.add_argument("--ca_cert", metavar="PEM", help="speak TLS, trusting this CA certificate")

    p = add("review", cmd_review, "a web page to upload an X-ray and see the served answer with Grad-CAM",
            "Serves a page on 127.0.0.1 where a JPEG, PNG or DICOM file is scored by the model server\n"
            "(gRPC) and explained by Grad-CAM of the same version's model.keras. Uploads are kept in\n"
            "memory only, unless --save-uploads names a folder. Not for clinical use.\n\n"
            "example: radflow review --server localhost:8500 --model_base_path models/radflow")
    p.add_argument("--server", default="localhost:8500", help="HOST:PORT of the model server's gRPC port")
    p.add_argument("--model", default="radflow", help="model name (default radflow)")
    p.add_argument("--model_base_path", help="the folder of the model's versions, as given to radflow serve "
                   "(default models/<model>)")
    p.add_argument("--port", type=int, default=8502, help="the page's port on 127.0.0.1 (default 8502)")
    p.add_argument("--save-uploads", metavar="DIR", help="keep every uploaded file in DIR (default: keep nothing)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call to the model server (default 10)")
    p.add_argument("--pacs", metavar="URL", help="open studies from this PACS's DICOMweb root by StudyInstanceUID")
    p.add_argument("--pacs-credentials", metavar="PATH", help="PACS credentials (see radflow route --help)")
    p.add_argument("--pacs-ca-file", metavar="PEM", help="CA of the PACS's https certificate")

    p = add("route", cmd_route, "answer new PACS images through the served model, stored back as DICOM SR + SC",
            "Polls the PACS (QIDO-RS) for new images the filter selects, sends each to the model server\n"
            "(TF Serving gRPC), and stores into the same study a Structured Report (model, version,\n"
            "scores, threshold, decision) and a Grad-CAM Secondary Capture, both created with highdicom\n"
            "and sent with STOW-RS. A persisted ledger answers each image once, across restarts; failed\n"
            "images are retried, then listed by --status. Not for clinical use. See docs/pacs.md.\n\n"
            "example: radflow route --pacs http://orthanc:8042/dicom-web --serving localhost:8500 --poll 10s \\\n"
            "             --model_base_path models/radflow --pacs-credentials /var/secrets/pacs")
    p.add_argument("--pacs", metavar="URL", help="the PACS's DICOMweb root, http(s)://HOST:PORT/PATH")
    p.add_argument("--serving", metavar="HOST:PORT", help="the model server's gRPC port")
    p.add_argument("--model", default="radflow", help="model name (default radflow)")
    p.add_argument("--model_base_path", help="the model's versions folder, for Grad-CAM (default: no SC)")
    p.add_argument("--state", default="route-state", help="folder of the ledger (default route-state)")
    p.add_argument("--poll", default="10s", help="seconds between polls: 10, 10s, 2m (default 10s)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=V1,V2", help="which images: "
                   "SOPClassUID (CR, DX), Modality=CR,DX and BodyPartExamined=CHEST by default; KEY= drops one")
    p.add_argument("--since", metavar="YYYYMMDD", help="first StudyDate answered (default: the first start's day)")
    p.add_argument("--lookback-days", type=int, default=14, help="answer StudyDates of the last N days only, so "
                   "polls stay cheap (default 14; 0: no limit)")
    p.add_argument("--workers", type=int, default=2, help="images answered at once (default 2)")
    p.add_argument("--queue-size", type=int, default=8, help="images dispatched to the workers at most (default 8)")
    p.add_argument("--max-pending", type=int, default=1000, help="pending images in the ledger at most; more wait "
                   "in the PACS and are found by a later poll (default 1000)")
    p.add_argument("--max-attempts", type=int, default=5, help="tries before an image is recorded as failed")
    p.add_argument("--retry-backoff", default="30s", help="wait after a failed try, doubled each time (default 30s)")
    p.add_argument("--pacs-credentials", metavar="PATH", help="a mounted Kubernetes Secret folder (username+"
                   "password, or token) or a file of 'key: value' lines")
    p.add_argument("--pacs-ca-file", metavar="PEM", help="CA of the PACS's https certificate")
    p.add_argument("--serving-ca-cert", metavar="PEM", help="speak TLS to the model server, trusting this CA")
    p.add_argument("--disclaimer", help="stated in every SR and burned into every SC (default: 'NOT FOR CLINICAL "
                   "USE - research output of radflow, not a diagnosis')")
    p.add_argument("--once", action="store_true", help="stop when nothing is left to try now")
    p.add_argument("--status", action="store_true", help="print the ledger's counts and failed images, and exit")
    p.add_argument("--retry-failed", action="store_true", help="make failed images pending again, and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        log.debug("failed", exc_info=True)
        for line in getattr(err, "problems", [str(err)]):  # a ConfigError: one line per problem
            print(f"radflow {args.command}: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # `radflow run` says more itself; elsewhere one line, not a traceback
        print(f"radflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
