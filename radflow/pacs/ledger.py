"""The router's durable record of every instance it has seen: SQLite, one transaction per change.

Each instance the router discovers gets one row, keyed by its SOPInstanceUID, in one of four states:

- `pending`: selected and not answered yet (including one whose answer was cut off by a crash);
  `attempts` failed tries so far, the next one not before `next_try`;
- `done`: its SR (and SC) are in the PACS, with the version that answered and the decision;
- `failed`: `max_attempts` tries failed; `error` says why (never patient data). `requeue_failed`
  puts such rows back;
- `skipped`: discovered, but not for this model (the filter said no); `error` says which attribute.

SQLite in WAL mode with synchronous=FULL commits each change durably before the call returns, so a
SIGKILL at any point leaves the rows as of the last finished change. The `meta` table keeps the
polling cursor (`since`: the first StudyDate the router answers).

    ledger = Ledger("route-state/ledger.sqlite")
    ledger.add_new([(sop, study, series)], max_pending=1000)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass

PENDING, DONE, FAILED, SKIPPED = "pending", "done", "failed", "skipped"
STATES = (PENDING, DONE, FAILED, SKIPPED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    discovered_at REAL NOT NULL,
    answered_at REAL,
    version INTEGER,
    decision TEXT,
    sr_uid TEXT,
    sc_uid TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_due ON instances (state, next_try);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    """One instance's row."""

    sop_uid: str
    study_uid: str
    series_uid: str
    state: str
    attempts: int = 0
    next_try: float = 0.0
    error: str = ""
    version: int | None = None
    decision: str | None = None
    sr_uid: str | None = None
    sc_uid: str | None = None
    note: str = ""


_COLUMNS = ("sop_uid", "study_uid", "series_uid", "state", "attempts", "next_try", "error", "version", "decision",
            "sr_uid", "sc_uid", "note")


class Ledger:
    """The SQLite ledger; one connection shared by the router's threads under a lock.

    Args:
        path: the database file (created with its tables when missing).
    """

    def __init__(self, path: str):
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def _rows(self, sql: str, args: tuple = ()) -> list[Entry]:
        with self._lock:
            return [Entry(*row) for row in self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM instances {sql}", args)]

    def meta(self, key: str, default: str) -> str:
        """A stored setting, stored as `default` on first use (the cursor survives restarts)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, default))
            return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def known(self, sop_uids: list[str]) -> set[str]:
        """Which of these instances already have a row (in any state)."""
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(sop_uids), 500):
                chunk = sop_uids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in self._db.execute(
                    f"SELECT sop_uid FROM instances WHERE sop_uid IN ({marks})", chunk))
        return found

    def add_new(self, instances: list[tuple[str, str, str]], max_pending: int) -> int:
        """Adds unseen instances as pending, while fewer than `max_pending` are pending.

        Instances beyond the bound are not recorded: they stay in the PACS, unseen, and a later
        poll finds them once the backlog has shrunk. That keeps the queue bounded and loses nothing.

        Args:
            instances: (SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID) of selected instances.
            max_pending: the bound on pending rows.

        Returns:
            How many were added.
        """
        added, now = 0, time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                room = max_pending - self._db.execute(
                    "SELECT COUNT(*) FROM instances WHERE state = ?", (PENDING,)).fetchone()[0]
                for sop, study, series in instances:
                    if added >= room:
                        break
                    added += self._db.execute(
                        "INSERT OR IGNORE INTO instances (sop_uid, study_uid, series_uid, state, discovered_at) "
                        "VALUES (?, ?, ?, ?, ?)", (sop, study, series, PENDING, now)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added

    def skip(self, instances: list[tuple[str, str, str, str]]) -> None:
        """Records instances the filter does not select: (SOPInstanceUID, study, series, why)."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO instances (sop_uid, study_uid, series_uid, state, error, discovered_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", [(s, st, se, SKIPPED, why, now) for s, st, se, why in instances])

    def mark_skipped(self, sop_uid: str, why: str) -> None:
        """A pending instance that its own header shows is not for this model."""
        self._write("UPDATE instances SET state = ?, error = ? WHERE sop_uid = ?", (SKIPPED, why, sop_uid))

    def due(self, limit: int, exclude: set[str], now: float | None = None) -> list[Entry]:
        """Pending instances whose next try is due, oldest first, other than those in `exclude`."""
        now = time.time() if now is None else now
        rows = self._rows("WHERE state = ? AND next_try <= ? ORDER BY discovered_at, sop_uid LIMIT ?",
                          (PENDING, now, limit + len(exclude)))
        return [r for r in rows if r.sop_uid not in exclude][:limit]

    def done(self, sop_uid: str, version: int, decision: str, sr_uid: str, sc_uid: str | None, note: str = "") -> None:
        """Records an answered instance."""
        self._write("UPDATE instances SET state = ?, answered_at = ?, version = ?, decision = ?, sr_uid = ?, "
                    "sc_uid = ?, note = ?, error = '' WHERE sop_uid = ?",
                    (DONE, time.time(), version, decision, sr_uid, sc_uid, note, sop_uid))

    def failed_attempt(self, sop_uid: str, error: str, max_attempts: int, backoff_s: float,
                       max_backoff_s: float) -> tuple[str, int]:
        """Counts one failed try: pending again after an exponential backoff, or failed after the last.

        Returns:
            (the new state, the attempts so far).
        """
        with self._lock:
            attempts = self._db.execute("SELECT attempts FROM instances WHERE sop_uid = ?",
                                        (sop_uid,)).fetchone()[0] + 1
            state = FAILED if attempts >= max_attempts else PENDING
            wait = min(max_backoff_s, backoff_s * 2 ** (attempts - 1))
            self._db.execute("UPDATE instances SET state = ?, attempts = ?, next_try = ?, error = ? WHERE sop_uid = ?",
                             (state, attempts, time.time() + wait, error, sop_uid))
        return state, attempts

    def requeue_failed(self) -> int:
        """Puts every failed instance back to pending with its attempts reset; returns how many."""
        return self._write("UPDATE instances SET state = ?, attempts = 0, next_try = 0 WHERE state = ?",
                           (PENDING, FAILED))

    def counts(self) -> dict[str, int]:
        with self._lock:
            found = dict(self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
        return {s: found.get(s, 0) for s in STATES}

    def entries(self, state: str | None = None) -> list[Entry]:
        if state is None:
            return self._rows("ORDER BY discovered_at, sop_uid")
        return self._rows("WHERE state = ? ORDER BY discovered_at, sop_uid", (state,))

    def get(self, sop_uid: str) -> Entry | None:
        rows = self._rows("WHERE sop_uid = ?", (sop_uid,))
        return rows[0] if rows else None
