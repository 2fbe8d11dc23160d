"""Each task of a local run writes everything it prints to RUN/logs/<task>.log; the terminal gets a view.

kfp.local's SubprocessRunner copies every line a task prints to the terminal and has no option
to send it elsewhere: its task handler calls the module function
`kfp.local.subprocess_task_handler.run_local_subprocess(full_command)`. While `TaskCapture` is
installed that function is its `run_task`, which runs the same command in its own process
group (so that an interrupt can reach the whole task, `sh` and Python alike), writes each line
to the task's log and hands it to a `StageView`, or echoes it with `verbose`. kfp is pinned
(2.13.0); tests/test_e2e.py fails if the hook is no longer called.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from radflow.pipeline.progress import StageView, shown, strip_ansi

LOGS_DIR = "logs"  # RUN/logs/<task>.log, kfp.log (kfp.local's own messages) and config.yaml
KFP_LOG = "kfp.log"
INTERRUPT_ATTEMPTS, INTERRUPT_WAIT_S = 2, 5  # SIGINTs sent to a task, and the wait after each, before SIGKILL


@dataclass
class TaskRecord:
    """One task that ran.

    Args:
        name: kfp.local's task name (its folder in the run), e.g. "class-balance".
        log: its log file.
        code: its exit status; None while running or when interrupted.
        seconds: how long it ran.
    """

    name: str
    log: str
    code: int | None = None
    seconds: float = 0.0


class RunLog(io.TextIOBase):
    """kfp.local's own messages, held until the run's folder is known, then appended to its kfp.log."""

    def __init__(self):
        self._held: list[str] = []
        self._file: TextIO | None = None

    def write(self, text: str) -> int:
        plain = strip_ansi(text)  # kfp.local colours its task names and statuses
        if self._file:
            self._file.write(plain)
        else:
            self._held.append(plain)
        return len(text)

    def open(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)
        self._file.write("".join(self._held))
        self._held.clear()

    def close(self) -> None:
        if self._file:
            self._file.close()
        super().close()


class Echo(io.TextIOBase):
    """What --verbose streams: to `stream` (colour removed unless it is a terminal), and to `also` if given.

    Args:
        stream: the terminal or file the user reads.
        plain: remove ANSI colour codes before writing to `stream`.
        also: a second sink that gets every write, e.g. the run's kfp.log.
    """

    def __init__(self, stream: TextIO, plain: bool, also: TextIO | None = None):
        self.stream, self.plain, self.also = stream, plain, also

    def write(self, text: str) -> int:
        self.stream.write(strip_ansi(text) if self.plain else text)
        if self.also:
            self.also.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class TaskCapture:
    """Runs kfp.local's task commands with their output sent to log files and a view.

    Args:
        view: draws the stage lines; None to draw none.
        echo: also write every line here, indented as kfp.local does (verbose); None for quiet.
        on_run_dir: called once with the run's folder, when the first task starts.
    """

    def __init__(self, view: StageView | None, echo: TextIO | None, on_run_dir: Callable[[str], None]):
        self.view, self.echo, self.on_run_dir = view, echo, on_run_dir
        self.run_dir: str | None = None
        self.tasks: list[TaskRecord] = []

    @property
    def current(self) -> TaskRecord | None:
        """The task that has not finished (the one an interrupt stopped), if any."""
        return self.tasks[-1] if self.tasks and self.tasks[-1].code is None else None

    @contextlib.contextmanager
    def installed(self) -> Iterator[TaskCapture]:
        from kfp.local import subprocess_task_handler

        original = subprocess_task_handler.run_local_subprocess
        subprocess_task_handler.run_local_subprocess = self.run_task
        try:
            yield self
        finally:
            subprocess_task_handler.run_local_subprocess = original

    def run_task(self, full_command: list[str]) -> int:
        """Runs one task's command; returns its exit status, as kfp.local's own function does."""
        task_dir = _task_dir(full_command)
        if self.run_dir is None:
            self.run_dir = os.path.dirname(task_dir)
            os.makedirs(os.path.join(self.run_dir, LOGS_DIR), exist_ok=True)
            self.on_run_dir(self.run_dir)
        record = TaskRecord(os.path.basename(task_dir), os.path.join(self.run_dir, LOGS_DIR,
                                                                      f"{os.path.basename(task_dir)}.log"))
        self.tasks.append(record)
        if self.view:
            self.view.started(record.name)
        # Unbuffered: Keras' epoch lines and the stage's log records arrive as they are printed.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(record.log, "w", buffering=1) as log, subprocess.Popen(
                full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                bufsize=1, env=env, process_group=0) as process:
            try:
                for line in iter(process.stdout.readline, ""):
                    log.write(strip_ansi(line))
                    if self.echo:
                        self.echo.write(f"    {line}")
                    if self.view:
                        self.view.output(line)
                record.code = process.wait()
            except BaseException:  # Ctrl-C (or SIGTERM) in this process: stop the whole task, keep its last words
                if self.view:
                    self.view.interrupted(record.name)
                _stop(process, log)
                raise
        if self.view:
            record.seconds = self.view.finished(record.name, record.code == 0, task_dir, shown(record.log))
        return record.code


def _task_dir(full_command: list[str]) -> str:
    """The task's folder in the run: where its executor input says executor_output.json goes."""
    try:
        executor_input = json.loads(full_command[full_command.index("--executor_input") + 1])
        return os.path.dirname(executor_input["outputs"]["outputFile"])
    except (ValueError, IndexError, KeyError) as err:
        raise RuntimeError("kfp.local's task command no longer carries --executor_input with an outputFile; "
                           "radflow's task logs were written for kfp 2.13") from err


def _stop(process: subprocess.Popen, log: TextIO) -> None:
    """Stops a task's whole process group, keeping what it prints on the way out in its log.

    SIGINT first, so Python prints where it was; twice, because a KeyboardInterrupt that lands in a
    __del__ is ignored; then SIGKILL. Train loses at most its current epoch: BackupAndRestore
    state is written after each one (double-checkpointed, so a kill mid-write keeps the older).
    A second Ctrl-C here kills at once.
    """
    rest = ""
    try:
        for _ in range(INTERRUPT_ATTEMPTS):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                rest, _ = process.communicate(timeout=INTERRUPT_WAIT_S)
                break
            except subprocess.TimeoutExpired:
                continue  # retrying communicate() loses no output
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            rest, _ = process.communicate()
            rest = (rest or "") + f"[radflow: the task did not stop on SIGINT within {INTERRUPT_ATTEMPTS} x " \
                                  f"{INTERRUPT_WAIT_S} s; killed]\n"
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.write(strip_ansi(rest or ""))
