"""What a person sees of a local run: one line per stage as it starts and ends, like a build tool.

    radflow run: data/sample -> runs/radflow-2026-12-01-10-00-00-000000 (every task's log: .../logs/)
    [1/7] ingest           done in 7.1 s: 594 ingested, 6 quarantined; train 443, val 31, test 120
    [5/7] train            1 min 02 s  epoch 12/30, val_auc 0.8417          <- live, on a terminal only

A stage's figures are read from the metadata its task recorded on its output artifacts (the
same the KFP UI shows), so they need no parsing of its log. On a terminal the running stage's
line is redrawn with its elapsed time and its latest progress (Keras epochs, ingest's files,
radflow's own messages); elsewhere each stage prints a start and an end line, with no colour.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)\s*$")
_KERAS_STEP = re.compile(r"^\d+/\d+ - .*?\bval_auc: ([0-9.]+)")
# A log record of a task, as the KFP executor formats it: "[KFP Executor 2026-12-01 10:00:00,000 INFO]: text"
_RECORD = re.compile(r"^\[KFP Executor [^\]]* (INFO|WARNING)\]: (\w+(?: progress)?: .*)$")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def shown(path: str) -> str:
    """A path as a person would type it here: relative below the current folder, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def duration(seconds: float) -> str:
    """3.2 -> "3.2 s", 221 -> "3 min 41 s"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Console:
    """Permanent lines, and on a terminal one live line below them that is redrawn in place.

    Args:
        stream: where the lines go.
        live: redraw a status line in place (a terminal); otherwise only whole lines are written.
        color: ANSI colours for the verdicts (only ever on a terminal).
    """

    def __init__(self, stream: TextIO, live: bool, color: bool):
        self.stream, self.live, self.color = stream, live, color
        self._lock = threading.Lock()
        self._status = ""

    @classmethod
    def for_stream(cls, stream: TextIO) -> Console:
        """Live and coloured when `stream` is a terminal (colour unless NO_COLOR is set), plain otherwise."""
        tty = hasattr(stream, "isatty") and stream.isatty()
        return cls(stream, live=tty, color=tty and not os.environ.get("NO_COLOR"))

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self._draw()

    def status(self, text: str) -> None:
        """Replaces the live line; does nothing where lines cannot be redrawn."""
        if not self.live:
            return
        with self._lock:
            self._clear()
            self._status = text
            self._draw()

    def _clear(self) -> None:
        if self.live and self._status:
            self.stream.write("\r\x1b[K")

    def _draw(self) -> None:
        if self.live and self._status:
            width = shutil.get_terminal_size((100, 24)).columns
            self.stream.write(self._status[: width - 1])
        self.stream.flush()

    def end_status(self) -> None:
        with self._lock:
            self._clear()
            self._status = ""
            self.stream.flush()


class StageView:
    """The stage lines of one run on a Console.

    Args:
        console: where to draw.
        total: the number of tasks the run will execute, for the [i/n] counter.
        clock: time source (tests pass a fake one).
    """

    def __init__(self, console: Console, total: int, clock: Callable[[], float] = time.monotonic):
        self.console, self.total, self.clock = console, total, clock
        self._index = 0
        self._task, self._started, self._progress = "", 0.0, ""
        self._width = max(len("validation-gate"), 13)
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def _prefix(self, task: str) -> str:
        return f"[{self._index}/{self.total}] {task:<{self._width}}"

    def started(self, task: str) -> None:
        self._index += 1
        self._task, self._started, self._progress = task, self.clock(), ""
        if self.console.live:
            self._redraw()
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
        else:
            self.console.line(f"{self._prefix(task)} ...")

    def output(self, line: str) -> None:
        """Takes one line the running task printed; a progress line becomes the live line's text."""
        text = progress_text(line, self._progress)
        if text != self._progress:
            self._progress = text
            self._redraw()

    def finished(self, task: str, ok: bool, task_dir: str, log_path: str) -> float:
        """Prints the stage's closing line; returns its duration in seconds."""
        seconds = self.clock() - self._started
        self._task = ""
        self.console.end_status()
        if ok:
            figures = stage_figures(task, task_dir)
            verdict = self.console.paint("done", "32")
            self.console.line(f"{self._prefix(task)} {verdict} in {duration(seconds)}" + (f": {figures}" if figures
                                                                                           else ""))
        else:
            verdict = self.console.paint("FAILED", "1;31")
            self.console.line(f"{self._prefix(task)} {verdict} after {duration(seconds)} (log: {log_path})")
        return seconds

    def interrupted(self, task: str) -> None:
        self._task = ""
        self.console.end_status()
        seconds = self.clock() - self._started
        self.console.line(f"{self._prefix(task)} {self.console.paint('interrupted', '1;33')} after "
                          f"{duration(seconds)}")

    def close(self) -> None:
        self._stop.set()
        self.console.end_status()

    def _redraw(self) -> None:
        if self._task:
            elapsed = duration(self.clock() - self._started)
            self.console.status(f"{self._prefix(self._task)} {elapsed:>10}  {self._progress}".rstrip())

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._redraw()


def progress_text(line: str, current: str) -> str:
    """What a live line should say after the task printed `line` (`current` when nothing new).

    Keras' "Epoch 3/30" and its epoch summary (val_auc), ingest's "ingest progress: ..." and any
    radflow log record ("train: ...", "validate: ...") count; library chatter does not.
    """
    line = strip_ansi(line).strip()
    epoch = _EPOCH.match(line)
    if epoch:
        return f"epoch {epoch.group(1)}/{epoch.group(2)}"
    step = _KERAS_STEP.match(line)
    if step and current.startswith("epoch "):
        return f"{current.split(',')[0]}, val_auc {float(step.group(1)):.4f}"
    record = _RECORD.match(line)
    if record and record.group(2).split(":")[0].split()[0] in _STAGE_WORDS:
        return record.group(2)
    return current


# The first word of radflow's own log records (components log as "<stage>: ...").
_STAGE_WORDS = {"ingest", "validate", "class_balance", "train", "tune", "evaluate", "push", "schema",
                "infra", "rollback"}


def _artifacts(task_dir: str) -> dict[str, dict[str, Any]]:
    """Output artifact name -> its metadata, from the task's executor_output.json ({} when missing)."""
    try:
        with open(os.path.join(task_dir, "executor_output.json")) as f:
            output = json.load(f)
    except (OSError, ValueError):
        return {}
    return {name: (a.get("artifacts") or [{}])[0].get("metadata", {})
            for name, a in output.get("artifacts", {}).items()}


def _ingest(a: dict) -> str:
    md = a.get("examples", {})
    states = md.get("states", {})
    counts = md.get("counts", {})
    parts = [f"{states.get(s, 0)} {s}" for s in ("ingested", "quarantined")]
    parts.append(f"{states.get('duplicate', 0)} duplicates")
    splits = ", ".join(f"{split} {sum(c.values())}" for split, c in counts.items())
    return ", ".join(parts) + (f"; {splits}" if splits else "")


def _validate(a: dict) -> str:
    md = a.get("statistics", {})
    if not md:
        return ""
    anomalies, warnings = int(md.get("anomalies", 0)), int(md.get("warnings", 0))
    verdict = "no anomalies" if not anomalies else f"{anomalies} anomalies, for validation-gate to act on"
    return verdict + (f", {warnings} warning(s)" if warnings else "") + ("" if md.get("baseline") else
                                                                          "; no drift baseline yet")


def _class_balance(a: dict) -> str:
    md = a.get("metrics", {})
    weights = ", ".join(f"{k.removeprefix('class_weight_')} {v:.2f}" for k, v in md.items()
                        if k.startswith("class_weight_"))
    ratio = md.get("imbalance_ratio")
    return (f"imbalance {ratio:.2f}:1" if ratio is not None else "") + (f"; class weights {weights}" if weights
                                                                         else "")


def _train(a: dict) -> str:
    md = a.get("model", {})
    if not md:
        return ""
    text = f"{md.get('epochs_run', '?')} epochs of {md.get('model', 'the model')}"
    if md.get("best_val_auc") is not None:
        text += f", best val AUC {md['best_val_auc']:.4f}"
        text += f" (epoch {md['best_epoch']})" if md.get("best_epoch") else ""
    if md.get("cv_val_auc"):
        cv = md["cv_val_auc"]
        text += f"; cross-validated val AUC {cv.get('mean', 0):.4f} ± {cv.get('std', 0):.4f}" if isinstance(
            cv, dict) else ""
    return text


def _train_fold(a: dict) -> str:
    md = a.get("fold_result", {})
    return f"fold {md.get('fold')}: val AUC {md['val_auc']:.4f}" if md.get("val_auc") is not None else ""


def _evaluate(a: dict) -> str:
    md = a.get("metrics", {})
    parts = []
    for key, name in (("roc_auc", "ROC AUC"), ("recall", "sensitivity"), ("specificity", "specificity")):
        if key in md:
            ci = (f" [{md[key + '_ci_low']:.3f}, {md[key + '_ci_high']:.3f}]"
                  if f"{key}_ci_low" in md and f"{key}_ci_high" in md else "")
            parts.append(f"{name} {md[key]:.3f}{ci}")
    blessed = a.get("evaluation", {}).get("blessed")
    verdict = "" if blessed is None else "blessed" if blessed else "NOT blessed"
    return ", ".join(parts) + (f"; {verdict}" if verdict else "")


def _push(a: dict) -> str:
    md = a.get("pushed", {})
    if not md:
        return ""
    if md.get("pushed"):
        return f"version {md.get('version')} at {shown(md['path']) if md.get('path') else '?'}"
    return "not pushed (see the summary below)"


_FIGURES: dict[str, Callable[[dict], str]] = {
    "ingest": _ingest, "validate": _validate, "class-balance": _class_balance, "train": _train,
    "train-after-folds": _train, "train-fold": _train_fold, "evaluate": _evaluate, "push": _push,
}


def stage_figures(task: str, task_dir: str) -> str:
    """The key figures of a finished task ("" when it recorded none, or is not a stage with figures).

    Args:
        task: kfp.local's task name, e.g. "ingest", "class-balance", "train-fold-2".
        task_dir: its folder in the run, holding executor_output.json.

    Returns:
        e.g. "594 ingested, 6 quarantined, 0 duplicates; train 443, val 31, test 120".
    """
    name = re.sub(r"-\d+$", "", task)
    summarize = _FIGURES.get(name)
    if task == "validation-gate":
        return "passed"
    if summarize is None:
        return ""
    try:
        return summarize(_artifacts(task_dir))
    except (KeyError, TypeError, ValueError):  # a metadata layout from another version: show the duration only
        return ""


def failure_reason(log_text: str) -> list[str]:
    """The exception a failed task ended with, as its message lines, from the task's log.

    Python prints the traceback last; the exception is the first unindented line after the last
    "Traceback" header, and its message runs to the end (log records excepted). A builtin or a
    radflow exception is shown by its message alone.

    Args:
        log_text: the whole log of the task.

    Returns:
        The message lines (at most 12), or [] when the log holds no traceback.
    """
    lines = [strip_ansi(line.rstrip()) for line in log_text.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("Traceback (most recent call last):")]
    if not starts:
        return []
    body = lines[starts[-1] + 1:]
    indent = len(lines[starts[-1]]) - len(lines[starts[-1]].lstrip())
    at = next((i for i, line in enumerate(body) if line[indent:indent + 1].strip()), None)  # past the frames
    if at is None:
        return []
    message = [line[indent:] for line in body[at:] if line.strip() and not line.lstrip().startswith("[KFP Executor")]
    name, sep, first = message[0].partition(": ")
    bare = name.rsplit(".", 1)[-1]
    if sep and (name.startswith("radflow.") or bare in _PLAIN_ERRORS):
        message[0] = first
    return message[:12]


_PLAIN_ERRORS = {"ValueError", "RuntimeError", "FileNotFoundError", "FileExistsError", "DataValidationError"}
