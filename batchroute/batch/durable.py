"""The store's batch table: every uploaded file and created batch, written before anyone waits.

A batch is money in flight for hours. The order of writes makes a killed run re-attach
instead of paying twice: the uploaded file is recorded with its lines (custom id -> request
key) before the batch is created, and the batch id right after; a rerun of the same run polls
a recorded batch, and for a file recorded without one first looks for it among the batches
the provider lists as created since the upload (a kill can fall between the provider creating
the batch and this table recording its id), and creates one only when there is none (never
uploading again).

Its own SQLite connection to the store's file (WAL lets it write beside the call writer), and
commits at once: these few writes must be on disk before the wait they protect.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_files (
    file_id TEXT PRIMARY KEY, batch_id TEXT, run_id TEXT NOT NULL, job_key TEXT NOT NULL,
    endpoint TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL, lines INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_files_by_run ON batch_files (run_id, model);
CREATE INDEX IF NOT EXISTS batch_files_by_job ON batch_files (job_key);
CREATE TABLE IF NOT EXISTS batch_lines (
    file_id TEXT NOT NULL, custom_id TEXT NOT NULL, key BLOB NOT NULL,
    PRIMARY KEY (file_id, custom_id)
);
"""

UPLOADED = "uploaded"  # recorded, no batch yet
OPEN = ("uploaded", "validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One recorded file and its batch, as `status` shows it."""

    file_id: str
    batch_id: str | None
    run_id: str
    endpoint: str
    model: str
    status: str
    lines: int
    created_at: float


class BatchTable:
    """The two tables in the store's file. Blocking: call from a worker thread. One call at a
    time (a lock): the parts of a split batch record themselves from several threads."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def record_file(
        self,
        file_id: str,
        *,
        run_id: str,
        job_key: str,
        endpoint: str,
        model: str,
        lines: Iterable[tuple[str, bytes]],
    ) -> None:
        """An uploaded input file and its lines (custom id, request key), before its batch."""
        now = time.time()
        rows = [(file_id, custom_id, key) for custom_id, key in lines]
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO batch_files VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                (file_id, run_id, job_key, endpoint, model, UPLOADED, len(rows), now, now),
            )
            self._db.executemany("INSERT OR REPLACE INTO batch_lines VALUES (?, ?, ?)", rows)

    def record_batch(self, file_id: str, batch_id: str, status: str) -> None:
        self._query(
            "UPDATE batch_files SET batch_id = ?, status = ?, updated_at = ? WHERE file_id = ?",
            (batch_id, status, time.time(), file_id),
        )

    def set_status(self, file_id: str, status: str) -> None:
        self._query(
            "UPDATE batch_files SET status = ?, updated_at = ? WHERE file_id = ?",
            (status, time.time(), file_id),
        )

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def open_files(self, run_id: str, *, endpoint: str, model: str) -> list[BatchRow]:
        """The run's files for `model` whose batch may still bring answers (not collected)."""
        marks = ",".join("?" * len(OPEN))
        rows = self._query(
            f"SELECT {_COLUMNS} FROM batch_files WHERE run_id = ? AND endpoint = ?"
            f" AND model = ? AND status IN ({marks}, 'completed', 'expired')"
            " ORDER BY created_at",
            (run_id, endpoint, model, *OPEN),
        )
        return [BatchRow(*row) for row in rows]

    def lines(self, file_id: str) -> list[tuple[str, bytes]]:
        """(custom id, request key) of each line of `file_id`."""
        rows = self._query(
            "SELECT custom_id, key FROM batch_lines WHERE file_id = ? ORDER BY rowid", (file_id,)
        )
        return [(str(c), bytes(k)) for c, k in rows]

    def of_job(self, job_key: str) -> list[BatchRow]:
        """Every file and batch recorded for a job, oldest first."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM batch_files WHERE job_key = ? ORDER BY created_at",
            (job_key,),
        )
        return [BatchRow(*row) for row in rows]


_COLUMNS = "file_id, batch_id, run_id, endpoint, model, status, lines, created_at"
