"""Persistent state: SQLite for metadata, ``.npy`` files for arrays, all under one data dir.

Every process (each gunicorn worker, each restart) opens the same files, so nothing lives
only in memory. Arrays are written to a temporary file and renamed into place before the
row that points at them is committed, so a crash never leaves a row without its data.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kmeans.errors import Conflict, NotFound, Unavailable, Unprocessable

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    rows INTEGER NOT NULL,
    n_features INTEGER NOT NULL,
    columns TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    dataset_id TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    fit_seconds REAL,
    rows INTEGER NOT NULL,
    n_features INTEGER NOT NULL,
    columns TEXT NOT NULL,
    inertia REAL,
    n_iter INTEGER,
    cluster_sizes TEXT,
    worker TEXT,
    queued_at TEXT,
    progress REAL NOT NULL DEFAULT 0,
    phase TEXT,
    run_token TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    time_limit REAL,
    callback_url TEXT,
    callback TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    preprocessing TEXT,
    silhouette REAL,
    davies_bouldin REAL,
    calinski_harabasz REAL,
    anomaly_threshold REAL,
    center_version INTEGER
);
CREATE TABLE IF NOT EXISTS model_versions (
    model_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    centers TEXT NOT NULL,
    counts TEXT NOT NULL,
    rows_added INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (model_id, version)
);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    dataset_id TEXT NOT NULL,
    status TEXT NOT NULL,
    k_min INTEGER NOT NULL,
    k_max INTEGER NOT NULL,
    params TEXT NOT NULL,
    results TEXT,
    recommended_k INTEGER,
    rule TEXT,
    error TEXT,
    progress REAL NOT NULL DEFAULT 0,
    worker TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    queued_at TEXT,
    not_before REAL,
    started_at TEXT,
    finished_at TEXT,
    progress REAL NOT NULL DEFAULT 0,
    phase TEXT,
    run_token TEXT,
    worker TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    time_limit REAL,
    error TEXT,
    last TEXT,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status);
CREATE INDEX IF NOT EXISTS deliveries_target ON deliveries (target_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    status TEXT,
    phase TEXT,
    data TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS models_dataset ON models (dataset_id);
CREATE INDEX IF NOT EXISTS events_project ON events (project, seq);
CREATE INDEX IF NOT EXISTS models_status ON models (status);
CREATE TABLE IF NOT EXISTS uploads (
    job_id INTEGER PRIMARY KEY,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    model_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_file ON uploads (filename, sha256);
-- Batch scorings of a stored dataset with a model (kmeans.scorejob): a job kind of their own.
CREATE TABLE IF NOT EXISTS scorings (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    model_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    status TEXT NOT NULL,
    threshold REAL,
    model_version INTEGER,
    rows INTEGER NOT NULL,
    rows_scored INTEGER NOT NULL DEFAULT 0,
    has_ids INTEGER NOT NULL DEFAULT 0,
    cluster_sizes TEXT,
    anomalies INTEGER,
    unknown_categories TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    queued_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    progress REAL NOT NULL DEFAULT 0,
    phase TEXT,
    run_token TEXT,
    worker TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    time_limit REAL,
    callback_url TEXT,
    callback TEXT,
    callback_secret TEXT,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS scorings_model ON scorings (model_id);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    model_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    project TEXT,
    hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, project)
);
-- A sign-in: one family of access and refresh tokens, revoked as a whole (logout, reuse of a
-- rotated refresh token, deletion of its user).
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    revoked_because TEXT
);
CREATE TABLE IF NOT EXISTS session_tokens (
    hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX IF NOT EXISTS session_tokens_session ON session_tokens (session_id);
-- Failed sign-ins, by user name and by client address (key: "user:<name>" or "addr:<host>").
CREATE TABLE IF NOT EXISTS sign_in_failures (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sign_in_failures_key ON sign_in_failures (key, at);
"""
# Evaluations of a model on a dataset (kmeans.evaluate): a job kind of the one queue, with the
# lifecycle columns every job has and the result as JSON.
EVALUATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    model_id TEXT NOT NULL,
    dataset_id TEXT NOT NULL,
    label_column TEXT,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    queued_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    progress REAL NOT NULL DEFAULT 0,
    phase TEXT,
    run_token TEXT,
    worker TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    time_limit REAL,
    callback_url TEXT,
    callback TEXT,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS evaluations_model ON evaluations (model_id, created_at);
CREATE INDEX IF NOT EXISTS evaluations_status ON evaluations (status);
"""
# Columns added after data dirs already existed: added on open, to new and old tables alike.
MIGRATIONS = {
    # Column types (NULL: a dataset from before them, all numeric), the id column, statistics.
    "datasets": {"project": "TEXT NOT NULL DEFAULT 'default'", "schema": "TEXT", "id_column": "TEXT", "stats": "TEXT"},
    # callback_secret: the key that signs a resource's webhook deliveries (never shown again).
    # checkpoint: a paused fit's checkpoint (JSON: when saved; resume starts from its centers);
    # copied_from: the model a copy was made of; cluster_names: JSON {"0": "bargain hunters", …}.
    "models": {
        "project": "TEXT NOT NULL DEFAULT 'default'", "callback_secret": "TEXT", "checkpoint": "TEXT",
        "copied_from": "TEXT", "cluster_names": "TEXT",
    },
    # Sweeps became jobs of the one queue: the lifecycle columns models have.
    "sweeps": {
        "project": "TEXT NOT NULL DEFAULT 'default'", "queued_at": "TEXT", "phase": "TEXT", "run_token": "TEXT",
        "heartbeat": "REAL", "attempts": "INTEGER NOT NULL DEFAULT 0", "time_limit": "REAL",
        "version": "INTEGER NOT NULL DEFAULT 1", "callback_url": "TEXT", "callback": "TEXT",
        "callback_secret": "TEXT", "preprocessing": "TEXT",
        # Choosing k: refits per k for stability, the rule asked for, the runner-up, each
        # measure's vote, and warnings (a feature whose scale decides alone).
        "stability_runs": "INTEGER NOT NULL DEFAULT 0", "rule_requested": "TEXT", "runner_up": "INTEGER",
        "votes": "TEXT", "warnings": "TEXT",
    },
}
# Every kind of background work and the table that holds it: one queue over all of them
# (the ``jobs`` view), one lifecycle (queued -> running -> succeeded / failed / cancelled,
# ``paused`` for fits), one claim, one heartbeat.
KINDS = {
    "fit": "models", "sweep": "sweeps", "webhook": "deliveries", "evaluation": "evaluations", "scoring": "scorings",
}
COMPUTE = ("fit", "sweep", "evaluation", "scoring")  # the kinds that run in job processes (or on Dask)
_JOB_COLUMNS = (
    "id, project, status, created_at, queued_at, started_at, finished_at, progress, phase, run_token, worker,"
    " heartbeat, attempts, time_limit, error, version"
)
JOBS_VIEW = "CREATE VIEW jobs AS " + " UNION ALL ".join(
    f"SELECT '{kind}' AS kind, {_JOB_COLUMNS}, {'not_before' if kind == 'webhook' else 'NULL'} AS not_before"
    f" FROM {table}"
    for kind, table in KINDS.items()
)
EVENTS_KEPT = 100_000  # the project event log keeps about this many of the latest events
DEFAULT_PROJECT = "default"

# The newest upload of a file name and content whose dataset still exists, in one project.
SAME_UPLOAD = (
    "SELECT u.* FROM uploads u JOIN datasets d ON d.id = u.dataset_id"
    " WHERE u.filename = ? AND u.sha256 = ? AND d.project = ? ORDER BY u.job_id DESC LIMIT 1"
)
JSON_FIELDS = (
    "schema", "stats", "columns", "params", "error", "cluster_sizes", "callback", "preprocessing", "results",
    "payload", "last", "data", "checkpoint", "votes", "warnings", "result", "unknown_categories",
    "cluster_names",
)
ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


LEFTOVER_SECONDS = 86400  # a temp file this old belongs to nobody, whatever its name says


def temp_name(suffix: str = "") -> str:
    """A fresh temp file name that says who owns it: ``host~pid~random<suffix>``."""
    return f"{socket.gethostname()}~{os.getpid()}~{secrets.token_hex(12)}{suffix}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()
    return state != "Z"


def now() -> str:
    """The current UTC time as ISO 8601."""
    return datetime.now(UTC).isoformat()


def new_id(prefix: str) -> str:
    """A random resource id such as ``ds_3f2a9c1e5b7d4a60``."""
    return f"{prefix}_{secrets.token_hex(8)}"


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in JSON_FIELDS:
        if key in record and record[key] is not None:
            record[key] = json.loads(record[key])
    return record


def _encode(value: Any, field: str = "a value") -> Any:
    """A value as SQLite keeps it (dicts and lists as JSON); never a non-finite number."""
    if isinstance(value, (dict, list)):
        return _json(value, field)
    if isinstance(value, float) and not math.isfinite(value):
        raise _not_finite(field)
    return value


def _json(value: Any, field: str = "a value") -> str:
    """Strict JSON (no NaN or Infinity: what the service stores, it must be able to send)."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        raise _not_finite(field) from None


def _not_finite(field: str) -> Unprocessable:
    # The last guard: every computation refuses its own overflow first, naming the column.
    return Unprocessable(f"{field} came out as a non-finite number, so nothing was stored (the values are too large)")


# A model's version 1 when it has none yet: (centers, counts, created_at); and what a new version
# is made of: (centers, counts, rows_added, source). See the "model versions" methods of Store.
FirstVersion = Callable[[], tuple[Any, Any, str]]
NewVersion = tuple[Any, Any, int, str]


class Store:
    """Datasets, models and classic uploads under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        for sub in ("datasets", "models", "scorings", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "kmeans.sqlite3"
        self._local = threading.local()
        # Server processes starting together on a new data dir would race to switch it to WAL
        # and create the tables ("database is locked", a worker that fails to boot): one at a
        # time, under a file lock. Both steps are no-ops once done.
        with open(self.root / "kmeans.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
            conn.executescript(SCHEMA)  # executescript manages its own commit
            conn.executescript(EVALUATIONS_SCHEMA)
            for table, columns in MIGRATIONS.items():
                have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, decl in columns.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            conn.execute("CREATE INDEX IF NOT EXISTS sweeps_status ON sweeps (status)")
            for table in KINDS.values():  # fair share: when each project's latest job started
                conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_started ON {table} (project, started_at)")
            for table in ("models", "sweeps"):  # finished jobs whose webhook is not queued yet
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {table}_pending_callback ON {table} (status)"
                    " WHERE callback_url IS NOT NULL AND callback IS NULL"
                )
            # A view holds no data: one whose definition is not the code's is made anew, in one
            # transaction (other processes read it meanwhile: they see the old one or the new one).
            have = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'jobs'").fetchone()
            if have is None or have[0] != JOBS_VIEW:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DROP VIEW IF EXISTS jobs")
                conn.execute(JOBS_VIEW)
                conn.execute("COMMIT")
            conn.execute(
                "INSERT OR IGNORE INTO projects (id, description, created_at) VALUES (?, ?, ?)",
                (DEFAULT_PROJECT, "Where resources go when no project is named.", now()),
            )

    # -- plumbing -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread and process: sqlite3 objects must not cross either.
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (no upgrade deadlocks)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        row = self._conn().execute(sql, args).fetchone()
        return _decode(row) if row is not None else None

    def _page(self, table: str, where: dict[str, Any], offset: int, limit: int) -> tuple[list[dict], int]:
        clause = " AND ".join(f"{k} = ?" for k in where) or "1"
        args = tuple(where.values())
        conn = self._conn()
        total = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {clause}", args).fetchone()[0]
        rows = conn.execute(
            f"SELECT * FROM {table} WHERE {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [_decode(r) for r in rows], total

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path in the data dir's tmp folder (same file system, so rename is atomic),
        named after the process that owns it (see :meth:`remove_leftovers`)."""
        return self.root / "tmp" / temp_name(suffix)

    def remove_leftovers(self) -> int:
        """Remove temp files no live process owns (a process killed mid-upload or mid-write
        leaves them): this host's whose process is gone, and any older than a day (another
        host's, or named before names carried their owner). Returns how many."""
        removed = 0
        host = socket.gethostname()
        for path in (self.root / "tmp").iterdir():
            owner = path.name.split("~")
            try:
                old = time.time() - path.stat().st_mtime > LEFTOVER_SECONDS
            except FileNotFoundError:
                continue
            dead = len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not process_alive(int(owner[1]))
            if dead or old:
                with suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed

    def dataset_path(self, dataset_id: str) -> Path:
        return self.root / "datasets" / f"{dataset_id}.npy"

    def dataset_arrays(self, dataset_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A dataset's numeric matrix and categorical codes (None: it has none), memory-mapped."""
        codes = self.codes_path(dataset_id)
        values = self.load_array(self.dataset_path(dataset_id), mmap=True)
        return values, self.load_array(codes, mmap=True) if codes.exists() else None

    def codes_path(self, dataset_id: str) -> Path:
        """A dataset's categorical columns as int32 codes (-1: missing)."""
        return self.root / "datasets" / f"{dataset_id}.codes.npy"

    def ids_path(self, dataset_id: str) -> Path:
        """A dataset's id column as text: an Arrow IPC file of one string column (variable
        width: a fixed-width ``.npy`` of strings takes the longest id's width for every row)."""
        return self.root / "datasets" / f"{dataset_id}.ids.arrow"

    def save_ids(self, path: Path, ids: Sequence[str]) -> None:
        """Write ids to ``path`` atomically (temp file, fsync, rename)."""
        import pyarrow as pa

        column = ids.cast(pa.large_string()) if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(
            list(ids), type=pa.large_string()
        )
        table = pa.table({"id": column})
        tmp = self.temp_path(".arrow")
        try:
            with open(tmp, "wb") as out:
                with pa.ipc.new_file(out, table.schema) as writer:
                    writer.write_table(table)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()

    def load_ids(self, dataset_id: str, offset: int = 0, limit: int | None = None) -> list[str] | None:
        """Ids ``offset .. offset+limit`` of a dataset (all by default); None without an id column."""
        import pyarrow as pa

        path = self.ids_path(dataset_id)
        if not path.exists():
            return None
        with pa.memory_map(str(path)) as source:
            column = pa.ipc.open_file(source).read_all().column(0)
            return column.slice(offset, limit).to_pylist()

    def load_id_column(self, dataset_id: str) -> Any:
        """A dataset's ids as the Arrow text column they are stored as (read, not memory-mapped); None without."""
        import pyarrow as pa

        path = self.ids_path(dataset_id)
        if not path.exists():
            return None
        with pa.OSFile(str(path)) as source:
            return pa.ipc.open_file(source).read_all().column(0).combine_chunks()

    def centers_path(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.centers.npy"

    def labels_path(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.labels.npy"

    def checkpoint_path(self, model_id: str, run_token: str) -> Path:
        """The centers (fitted space) the run ``run_token`` of a KMeans fit had at its latest
        checkpoint: one file per run, so that a run that is being stopped never overwrites
        the checkpoint of the run after it."""
        return self.root / "models" / f"{model_id}.checkpoint.{run_token}.npy"

    def remove_checkpoints(self, model_id: str) -> None:
        """Remove every checkpoint of a model's runs."""
        for path in (self.root / "models").glob(f"{model_id}.checkpoint.*.npy"):
            path.unlink(missing_ok=True)

    def stage_array(self, array: np.ndarray | list[np.ndarray]) -> Path:
        """Write an array (or its row chunks, one after the other) as ``.npy`` to a fresh temp
        file, fsynced; the caller renames it into place. Chunks are never concatenated in memory."""
        chunks = array if isinstance(array, list) else [array]
        first = chunks[0]
        shape = (sum(len(c) for c in chunks), *first.shape[1:])
        tmp = self.temp_path(".npy")
        try:
            with open(tmp, "wb") as out:
                header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(out, header)
                for chunk in chunks:
                    out.write(np.ascontiguousarray(chunk, dtype=first.dtype).data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def save_array(self, path: Path, array: np.ndarray | list[np.ndarray]) -> None:
        """Write an array (or its row chunks) to ``path`` as ``.npy``, atomically: temp file,
        fsync, rename."""
        tmp = self.stage_array(array)
        try:
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def load_array(path: Path, mmap: bool = False) -> np.ndarray:
        """Read an array written by ``save_array``; never unpickles."""
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

    # -- datasets -------------------------------------------------------------------------

    def add_dataset(
        self,
        record: dict[str, Any],
        values: np.ndarray | list[np.ndarray],
        codes: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        """Store the numeric array (or its row chunks), the categorical codes and the ids,
        then the row that makes them visible."""
        record = {"project": DEFAULT_PROJECT, "schema": None, "id_column": None, **record}
        paths = [self.dataset_path(record["id"])]
        try:
            if isinstance(values, list) and not values:
                values = np.empty((record["rows"], 0))
            self.save_array(paths[0], values)
            if codes is not None:
                paths.append(self.codes_path(record["id"]))
                self.save_array(paths[-1], codes)
            if ids is not None:
                paths.append(self.ids_path(record["id"]))
                self.save_ids(paths[-1], ids)
            keys = ("id", "name", "rows", "n_features", "columns", "sha256", "size_bytes", "created_at", "project",
                    "schema", "id_column")
            with self.transaction() as db:
                db.execute(
                    f"INSERT INTO datasets ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                    tuple(_encode(record[k], k) for k in keys),
                )
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise

    def set_dataset_stats(self, dataset_id: str, stats: list[dict[str, Any]]) -> None:
        """Keep a dataset's column statistics (it never changes, so they are computed once)."""
        with self.transaction() as db:
            db.execute("UPDATE datasets SET stats = ? WHERE id = ?", (_json(stats, "stats"), dataset_id))

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))

    def list_datasets(self, offset: int, limit: int, project: str | None = None) -> tuple[list[dict], int]:
        return self._page("datasets", {"project": project} if project else {}, offset, limit)

    def delete_dataset(self, dataset_id: str) -> bool:
        """Remove a dataset unless a fit on it is still queued or running."""
        with self.transaction() as db:
            for table, what in (
                ("models", "model"), ("sweeps", "sweep"), ("evaluations", "evaluation"), ("scorings", "scoring")
            ):
                busy = db.execute(
                    f"SELECT id FROM {table} WHERE dataset_id = ? AND status IN (?, ?, ?) LIMIT 1",
                    (dataset_id, *ACTIVE, "paused"),
                ).fetchone()
                if busy is not None:
                    raise Conflict(
                        f"dataset {dataset_id} is in use by {what} {busy['id']}, which is queued, running or paused;"
                        " cancel it first"
                    )
            gone = db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,)).rowcount
        if gone:
            for path in (self.dataset_path(dataset_id), self.codes_path(dataset_id), self.ids_path(dataset_id)):
                path.unlink(missing_ok=True)
        return bool(gone)

    # -- models ---------------------------------------------------------------------------

    def add_model(self, record: dict[str, Any], idempotency: tuple[str, str] | None = None) -> dict[str, Any]:
        """Insert a model; with ``(key, fingerprint)``, the model stored earlier under that key
        wins (the caller compares fingerprints). Returns the model that is stored."""
        keys = list(record)
        with self.transaction() as db:
            if idempotency is not None:
                earlier = db.execute(
                    "SELECT k.fingerprint, m.* FROM idempotency_keys k JOIN models m ON m.id = k.model_id"
                    " WHERE k.key = ?",
                    (idempotency[0],),
                ).fetchone()
                if earlier is not None:
                    return _decode(earlier)
                db.execute(
                    "INSERT INTO idempotency_keys (key, fingerprint, model_id, created_at) VALUES (?, ?, ?, ?)",
                    (*idempotency, record["id"], now()),
                )
            db.execute(
                f"INSERT INTO models ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(_encode(record[k], k) for k in keys),
            )
            self._log_event(db, "fit", record["id"])
        return record

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM models WHERE id = ?", (model_id,))

    def list_models(
        self,
        offset: int,
        limit: int,
        dataset_id: str | None = None,
        status: str | None = None,
        project: str | None = None,
    ) -> tuple[list[dict], int]:
        pairs = (("dataset_id", dataset_id), ("status", status), ("project", project))
        where = {k: v for k, v in pairs if v}
        return self._page("models", where, offset, limit)

    def update_model(
        self, model_id: str, only_if_status: tuple[str, ...] = (), owner: str | None = None, **fields: Any
    ) -> bool:
        """:meth:`update_job` of a fit."""
        return self.update_job("fit", model_id, only_if_status, owner, **fields)

    def change_cluster_names(
        self, model_id: str, change: Callable[[dict[str, Any]], dict[str, str]]
    ) -> dict[str, Any] | None:
        """Set a model's cluster names to ``change(model)`` (which may raise: then nothing is
        written), read and written in one transaction so that concurrent patches never lose one;
        the model as it is now (None if it is gone)."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                return None
            names = change(_decode(row))
            self._update_job(db, "fit", model_id, cluster_names=names or None)
        return self.get_model(model_id)

    def finish_model(
        self, model_id: str, run_token: str, centers: np.ndarray, labels: np.ndarray, **fields: Any
    ) -> bool:
        """Store a fit's arrays and mark it succeeded, if this run still owns it; else discard them.

        The arrays are renamed into place inside the transaction that checks ownership, so a
        run that lost its model (cancelled, paused, re-queued) never touches the files of the
        run that owns it, and nobody sees the model succeeded before its files exist."""
        if not np.isfinite(centers).all():
            raise _not_finite("a center")
        staged = [self.stage_array(centers), self.stage_array(labels)]
        try:
            with self.transaction() as db:
                if not self._update_job(db, "fit", model_id, ("running",), run_token, status="succeeded", **fields):
                    return False
                os.replace(staged[0], self.centers_path(model_id))
                os.replace(staged[1], self.labels_path(model_id))
        finally:
            for path in staged:
                path.unlink(missing_ok=True)
        self.remove_checkpoints(model_id)
        return True

    def delete_model(self, model_id: str) -> bool:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount
            self._cancel_deliveries(db, model_id, "model")
            db.execute("DELETE FROM model_versions WHERE model_id = ?", (model_id,))
            db.execute("UPDATE uploads SET model_id = NULL WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM idempotency_keys WHERE model_id = ?", (model_id,))
        if gone:
            self._remove_model_files(model_id)
        return bool(gone)

    def _remove_model_files(self, model_id: str) -> None:
        for path in (self.centers_path(model_id), self.labels_path(model_id)):
            path.unlink(missing_ok=True)
        self.remove_checkpoints(model_id)

    # -- classic uploads ------------------------------------------------------------------

    def find_upload(self, filename: str, sha256: str, project: str) -> dict[str, Any] | None:
        """The newest upload of the same name and content in ``project`` whose dataset still exists."""
        return self._one(SAME_UPLOAD, (filename, sha256, project))

    def add_upload(self, filename: str, sha256: str, dataset_id: str, project: str) -> int:
        """Number a new upload 0, 1, 2, … — unless the same name and content is already an
        upload with a live dataset, whose job_id is returned instead. One transaction, so
        concurrent uploads of one file (retries, several workers) get one job_id."""
        with self.transaction() as db:
            earlier = db.execute(SAME_UPLOAD, (filename, sha256, project)).fetchone()
            if earlier is not None:
                return earlier["job_id"]
            db.execute(
                "INSERT INTO uploads (job_id, filename, sha256, dataset_id, created_at)"
                " SELECT COALESCE(MAX(job_id) + 1, 0), ?, ?, ?, ? FROM uploads",
                (filename, sha256, dataset_id, now()),
            )
            return db.execute("SELECT MAX(job_id) FROM uploads").fetchone()[0]

    def get_upload(self, job_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM uploads WHERE job_id = ?", (job_id,))

    def set_upload_model(self, job_id: int, model_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE uploads SET model_id = ? WHERE job_id = ?", (model_id, job_id))

    # -- projects and tokens --------------------------------------------------------------

    def add_project(self, project_id: str, description: str) -> dict[str, Any]:
        """Create a project; Conflict if the name is taken."""
        record = {"id": project_id, "description": description, "created_at": now()}
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO projects (id, description, created_at) VALUES (?, ?, ?)", (
                    project_id, description, record["created_at"]))
        except sqlite3.IntegrityError:
            raise Conflict(f"project {project_id!r} exists already") from None
        return record

    def get_project(self, project_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM projects WHERE id = ?", (project_id,))

    def list_projects(self, offset: int, limit: int) -> tuple[list[dict], int]:
        return self._page("projects", {}, offset, limit)

    def delete_project(self, project_id: str) -> bool:
        """Remove an empty project; Conflict while it holds datasets, models, sweeps or live tokens."""
        with self.transaction() as db:
            for table in ("datasets", "models", "sweeps"):
                if db.execute(f"SELECT 1 FROM {table} WHERE project = ? LIMIT 1", (project_id,)).fetchone():
                    raise Conflict(f"project {project_id!r} still has {table}; delete them first")
            if db.execute(
                "SELECT 1 FROM tokens WHERE project = ? AND revoked_at IS NULL LIMIT 1", (project_id,)
            ).fetchone():
                raise Conflict(f"project {project_id!r} still has tokens that are not revoked; revoke them first")
            if db.execute("SELECT 1 FROM memberships WHERE project = ? LIMIT 1", (project_id,)).fetchone():
                raise Conflict(f"project {project_id!r} still has members; change their memberships first")
            # Its resources are gone, so are their deliveries' reasons (cancelled on delete).
            db.execute("DELETE FROM deliveries WHERE project = ?", (project_id,))
            return db.execute("DELETE FROM projects WHERE id = ?", (project_id,)).rowcount > 0

    def add_token(self, record: dict[str, Any]) -> None:
        """Store a token's record (its hash, never the token)."""
        keys = list(record)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO tokens ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(record[k] for k in keys),
            )

    def token_by_hash(self, digest: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM tokens WHERE hash = ?", (digest,))

    def get_token(self, token_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM tokens WHERE id = ?", (token_id,))

    def list_tokens(self, offset: int, limit: int, project: str | None = None) -> tuple[list[dict], int]:
        return self._page("tokens", {"project": project} if project else {}, offset, limit)

    def revoke_token(self, token_id: str) -> dict[str, Any] | None:
        """Mark a token revoked (once; the first time is kept)."""
        with self.transaction() as db:
            db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now(), token_id))
        return self.get_token(token_id)

    def has_tokens(self) -> bool:
        """Whether any token was ever created here (revoked ones count: auth stays on)."""
        return self._conn().execute("SELECT 1 FROM tokens LIMIT 1").fetchone() is not None

    # -- users and their sign-ins ---------------------------------------------------------

    def has_users(self) -> bool:
        """Whether any user was ever created here (auth stays on once one exists)."""
        return self._conn().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def add_user(self, record: dict[str, Any], memberships: list[dict[str, str]]) -> None:
        """Store a user (its password hash, never the password) and its memberships; Conflict if the name is taken."""
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO users (id, name, admin, password_hash, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (record["id"], record["name"], int(record["admin"]), record["password_hash"],
                     record["created_at"], record["created_at"]),
                )
                self._set_memberships(db, record["id"], memberships)
        except sqlite3.IntegrityError:
            raise Conflict(f"a user named {record['name']!r} exists already", parameter="name") from None

    @staticmethod
    def _set_memberships(db: sqlite3.Connection, user_id: str, memberships: list[dict[str, str]]) -> None:
        db.execute("DELETE FROM memberships WHERE user_id = ?", (user_id,))
        for member in memberships:
            # A project deleted meanwhile would leave a membership of nothing: checked in this transaction.
            if db.execute("SELECT 1 FROM projects WHERE id = ?", (member["project"],)).fetchone() is None:
                raise Unprocessable(f"no project with id {member['project']}", parameter="memberships")
            db.execute(
                "INSERT INTO memberships (user_id, project, role) VALUES (?, ?, ?)",
                (user_id, member["project"], member["role"]),
            )

    def update_user(
        self, user_id: str, admin: bool | None, password_hash: str | None, memberships: list[dict[str, str]] | None
    ) -> bool:
        """Change a user's admin flag, password hash and (all of its) memberships; False if there is no such user."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                return False
            if admin is not None:
                db.execute("UPDATE users SET admin = ? WHERE id = ?", (int(admin), user_id))
            if password_hash is not None:
                db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            if memberships is not None:
                self._set_memberships(db, user_id, memberships)
            db.execute("UPDATE users SET updated_at = ? WHERE id = ?", (now(), user_id))
        return True

    def _with_memberships(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
        if record is None:
            return None
        rows = self._conn().execute(
            "SELECT project, role FROM memberships WHERE user_id = ? ORDER BY project", (record["id"],)
        ).fetchall()
        return {**record, "admin": bool(record["admin"]), "memberships": [dict(r) for r in rows]}

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """A user with its memberships (and its password hash: callers never show it)."""
        return self._with_memberships(self._one("SELECT * FROM users WHERE id = ?", (user_id,)))

    def user_by_name(self, name: str) -> dict[str, Any] | None:
        """The user of a sign-in name, with its memberships."""
        return self._with_memberships(self._one("SELECT * FROM users WHERE name = ?", (name,)))

    def list_users(self, offset: int, limit: int) -> tuple[list[dict], int]:
        """A page of users with their memberships."""
        items, total = self._page("users", {}, offset, limit)
        return [self._with_memberships(item) for item in items], total  # type: ignore[misc]

    def delete_user(self, user_id: str) -> bool:
        """Remove a user, its memberships and its sign-ins (refused from the next request on)."""
        with self.transaction() as db:
            db.execute("DELETE FROM memberships WHERE user_id = ?", (user_id,))
            db.execute(
                "UPDATE sessions SET revoked_at = ?, revoked_because = 'the user was deleted'"
                " WHERE user_id = ? AND revoked_at IS NULL",
                (now(), user_id),
            )
            return db.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0

    def add_session(self, session_id: str, user_id: str, tokens: list[dict[str, Any]]) -> None:
        """A new sign-in with its first access and refresh tokens (their hashes)."""
        with self.transaction() as db:
            db.execute("INSERT INTO sessions (id, user_id, created_at) VALUES (?, ?, ?)", (session_id, user_id, now()))
            self._add_session_tokens(db, tokens)

    @staticmethod
    def _add_session_tokens(db: sqlite3.Connection, tokens: list[dict[str, Any]]) -> None:
        for token in tokens:
            db.execute(
                "INSERT INTO session_tokens (hash, session_id, kind, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token["hash"], token["session_id"], token["kind"], token["created_at"], token["expires_at"]),
            )

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """One sign-in (its user, when it was revoked and why)."""
        return self._one("SELECT * FROM sessions WHERE id = ?", (session_id,))

    def session_token(self, digest: str, kind: str) -> dict[str, Any] | None:
        """A session token of ``kind`` by its hash, with its session's user and revocation."""
        return self._one(
            "SELECT t.*, s.user_id, s.revoked_at, s.revoked_because FROM session_tokens t"
            " JOIN sessions s ON s.id = t.session_id WHERE t.hash = ? AND t.kind = ?",
            (digest, kind),
        )

    def rotate_refresh(self, digest: str, tokens: list[dict[str, Any]]) -> str:
        """Use a refresh token once: 'rotated' (and ``tokens`` stored), 'reused' (its whole session
        revoked), 'revoked' or 'unknown'. In one transaction, so two uses of one token never both rotate."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT t.used_at, t.session_id, s.revoked_at FROM session_tokens t"
                " JOIN sessions s ON s.id = t.session_id WHERE t.hash = ? AND t.kind = 'refresh'",
                (digest,),
            ).fetchone()
            if row is None:
                return "unknown"
            if row["revoked_at"]:
                return "revoked"
            if row["used_at"]:
                self._revoke_session(db, row["session_id"], "a refresh token was used twice")
                return "reused"
            db.execute("UPDATE session_tokens SET used_at = ? WHERE hash = ?", (now(), digest))
            self._add_session_tokens(db, tokens)
            return "rotated"

    @staticmethod
    def _revoke_session(db: sqlite3.Connection, session_id: str, because: str) -> None:
        db.execute(
            "UPDATE sessions SET revoked_at = ?, revoked_because = ? WHERE id = ? AND revoked_at IS NULL",
            (now(), because, session_id),
        )

    def revoke_session(self, session_id: str, because: str) -> None:
        """Revoke a sign-in: each of its tokens is refused from the next request on."""
        with self.transaction() as db:
            self._revoke_session(db, session_id, because)

    def revoke_other_sessions(self, user_id: str, keep: str | None, because: str) -> None:
        """Revoke every sign-in of a user but ``keep``."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sessions SET revoked_at = ?, revoked_because = ?"
                " WHERE user_id = ? AND id IS NOT ? AND revoked_at IS NULL",
                (now(), because, user_id, keep),
            )
            # Tokens of long-ended sessions are dead weight: drop the expired ones of this user.
            db.execute(
                "DELETE FROM session_tokens WHERE expires_at < ? AND session_id IN"
                " (SELECT id FROM sessions WHERE user_id = ?)",
                (now(), user_id),
            )

    def sign_in_failures(self, keys: list[str], since: float) -> dict[str, tuple[int, float]]:
        """Per key: how many failures since ``since`` (epoch seconds), and the oldest of them."""
        found: dict[str, tuple[int, float]] = {}
        for key in keys:
            count, oldest = self._conn().execute(
                "SELECT COUNT(*), MIN(at) FROM sign_in_failures WHERE key = ? AND at >= ?", (key, since)
            ).fetchone()
            if count:
                found[key] = (count, oldest)
        return found

    def add_sign_in_failure(self, keys: list[str], at: float, older_than: float) -> None:
        """Count a failed sign-in against each key (and forget failures before ``older_than``)."""
        with self.transaction() as db:
            db.execute("DELETE FROM sign_in_failures WHERE at < ?", (older_than,))
            db.executemany("INSERT INTO sign_in_failures (key, at) VALUES (?, ?)", [(k, at) for k in keys])

    def clear_sign_in_failures(self, key: str) -> None:
        """Forget a key's failures (a user's, after it signed in)."""
        with self.transaction() as db:
            db.execute("DELETE FROM sign_in_failures WHERE key = ?", (key,))

    # -- health ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise Unavailable unless the database answers."""
        try:
            self._conn().execute("SELECT 1 FROM datasets LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"the data directory's database cannot be read: {exc}") from None

    # -- model versions ---------------------------------------------------------------------
    # The centers and counts of an online (minibatch) model, version by version; kmeans.online
    # does the math. A version never changes once written. ``first()`` gives version 1 of a
    # model that has no versions yet, as (centers, counts, created_at): it is called only then,
    # inside the transaction that records it. Centers and counts are stored as JSON (exact for
    # float64) and come back as lists.

    def seed_version(self, model_id: str, centers: Any, counts: Any, source: str = "import") -> None:
        """Record version 1 with given centers and counts (an imported model continues from its export's)."""
        with self.transaction() as db:
            self._insert_version(db, model_id, 1, centers, counts, 0, source, now())

    def list_versions(self, model_id: str, first: FirstVersion) -> tuple[int, list[dict[str, Any]]]:
        """A model's current version number and all its versions, oldest first."""
        with self.transaction() as db:
            self._ensure_first_version(db, model_id, first)
            current = self._current_version(db, model_id)
            rows = db.execute("SELECT * FROM model_versions WHERE model_id = ? ORDER BY version", (model_id,))
            return current, [self._version_record(r) for r in rows.fetchall()]

    def get_version(self, model_id: str, number: int, first: FirstVersion) -> dict[str, Any]:
        """Version ``number`` of a model, or NotFound."""
        with self.transaction() as db:
            self._ensure_first_version(db, model_id, first)
            return self._existing_version(db, model_id, number)

    def append_version(
        self, model_id: str, first: FirstVersion, compute: Callable[[dict[str, Any]], NewVersion],
        base: int | None = None, event: str | None = None,
    ) -> dict[str, Any]:
        """Make a model's next version and make it current, in one write transaction (updates of
        one model are serialized by the write lock, across threads and processes: none is lost).
        ``compute(version)`` gets version ``base`` (default: the current one; NotFound if there is
        none such) and gives the new one's ``(centers, counts, rows_added, source)``. With
        ``event``, the new version is logged to the project event log under that kind, with data
        ``{"version": n, "rows_added": m}``, in the same transaction."""
        with self.transaction() as db:
            self._ensure_first_version(db, model_id, first)
            number = self._current_version(db, model_id) if base is None else base
            centers, counts, rows_added, source = compute(self._existing_version(db, model_id, number))
            latest = db.execute("SELECT MAX(version) FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()
            version = latest[0] + 1
            self._insert_version(db, model_id, version, centers, counts, rows_added, source, now())
            db.execute("UPDATE models SET center_version = ?, version = version + 1 WHERE id = ?", (version, model_id))
            if event is not None:
                self._log_event(db, event, model_id, {"version": version, "rows_added": rows_added})
            return self._version_row(db, model_id, version)

    def version_centers(self, model_id: str, number: int) -> list[list[float]] | None:
        """The centers of version ``number`` of a model (None: no such version is recorded)."""
        row = self._conn().execute(
            "SELECT centers FROM model_versions WHERE model_id = ? AND version = ?", (model_id, number)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def _version_record(row: sqlite3.Row) -> dict[str, Any]:
        """A ``model_versions`` row with its centers and counts decoded."""
        record = dict(row)
        record["centers"], record["counts"] = json.loads(record["centers"]), json.loads(record["counts"])
        return record

    @staticmethod
    def _insert_version(
        db: sqlite3.Connection, model_id: str, version: int, centers: Any, counts: Any, rows_added: int,
        source: str, created_at: str,
    ) -> None:
        db.execute(
            "INSERT INTO model_versions (model_id, version, centers, counts, rows_added, source, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model_id, version, _json(np.asarray(centers).tolist(), "centers"),
             _json(np.asarray(counts).tolist(), "counts"), rows_added, source, created_at),
        )

    def _ensure_first_version(self, db: sqlite3.Connection, model_id: str, first: FirstVersion) -> None:
        """Record version 1 (the fit's result, from ``first()``) if the model has no versions yet."""
        if db.execute("SELECT 1 FROM model_versions WHERE model_id = ? LIMIT 1", (model_id,)).fetchone():
            return
        centers, counts, created_at = first()
        self._insert_version(db, model_id, 1, centers, counts, 0, "fit", created_at)

    @staticmethod
    def _current_version(db: sqlite3.Connection, model_id: str) -> int:
        row = db.execute("SELECT center_version FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise NotFound(f"no model with id {model_id}")
        return row[0] or 1

    @staticmethod
    def _version_row(db: sqlite3.Connection, model_id: str, number: int) -> dict[str, Any] | None:
        row = db.execute(
            "SELECT * FROM model_versions WHERE model_id = ? AND version = ?", (model_id, number)
        ).fetchone()
        return None if row is None else Store._version_record(row)

    @staticmethod
    def _existing_version(db: sqlite3.Connection, model_id: str, number: int) -> dict[str, Any]:
        found = Store._version_row(db, model_id, number)
        if found is None:
            raise NotFound(f"model {model_id} has no version {number}")
        return found

    # -- the job queue: fits, sweeps and webhook deliveries ----------------------------------

    def _log_event(self, db: sqlite3.Connection, kind: str, job_id: str, data: dict | None = None) -> None:
        """Append a job's current status (or ``data``, e.g. a push) to the project event log."""
        table = KINDS.get(kind, "models")
        db.execute(
            f"INSERT INTO events (project, kind, resource_id, status, phase, data, at)"
            f" SELECT project, ?, id, status, phase, ?, ? FROM {table} WHERE id = ?",
            (kind, _encode(data), now(), job_id),
        )
        seq = db.execute("SELECT last_insert_rowid()").fetchone()[0]
        if seq % 1000 == 0:  # now and then, forget the oldest events
            db.execute("DELETE FROM events WHERE seq <= ?", (seq - EVENTS_KEPT,))

    def events_since(self, seq: int, project: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """Events after ``seq`` (of one project, or all), oldest first."""
        where, args = ("AND project = ?", (project,)) if project else ("", ())
        rows = self._conn().execute(
            f"SELECT * FROM events WHERE seq > ? {where} ORDER BY seq LIMIT ?", (seq, *args, limit)
        ).fetchall()
        return [_decode(r) for r in rows]

    def last_event(self) -> int:
        """The sequence number of the latest event (0: none yet)."""
        return self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def get_job(self, kind: str, job_id: str) -> dict[str, Any] | None:
        """The record of a job (a model, sweep or delivery) with its ``kind``."""
        record = self._one(f"SELECT * FROM {KINDS[kind]} WHERE id = ?", (job_id,))
        return {**record, "kind": kind} if record is not None else None

    def update_job(
        self, kind: str, job_id: str, only_if_status: tuple[str, ...] = (), owner: str | None = None, **fields: Any
    ) -> bool:
        """Set ``fields`` on a job if it still exists (in one of ``only_if_status``, and still run
        by the run whose token is ``owner``). Every change bumps ``version``, the id of the job's
        live events; a change of status is also logged for the project's event stream."""
        with self.transaction() as db:
            return self._update_job(db, kind, job_id, only_if_status, owner, **fields)

    def _update_job(
        self, db: sqlite3.Connection, kind: str, job_id: str, only_if_status: tuple[str, ...] = (),
        owner: str | None = None, **fields: Any,
    ) -> bool:
        sets = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE {KINDS[kind]} SET {sets}, version = version + 1 WHERE id = ?"
        args: tuple = (*(_encode(v, k) for k, v in fields.items()), job_id)
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' * len(only_if_status))})"
            args += only_if_status
        if owner is not None:
            sql += " AND run_token = ?"
            args += (owner,)
        changed = db.execute(sql, args).rowcount > 0
        if changed and "status" in fields:
            self._log_event(db, kind, job_id)
        return changed

    def claim_next(
        self, worker: str, max_running: int, run_token: str, kinds: tuple[str, ...] = COMPUTE
    ) -> dict[str, Any] | None:
        """Take the next queued job of ``kinds`` (in :func:`fair_order`) for ``worker``, if fewer
        than ``max_running`` of them run across every process sharing this data dir."""
        marks = ", ".join("?" * len(kinds))
        if self._running(self._conn(), kinds) >= max_running:
            return None  # a read first: while every slot is taken, waiting processes take no write lock
        with self.transaction() as db:
            running = dict(db.execute(
                f"SELECT project, COUNT(*) FROM jobs WHERE status = 'running' AND kind IN ({marks}) GROUP BY project",
                kinds,
            ).fetchall())
            if sum(running.values()) >= max_running:
                return None
            queued = self._queued(db, kinds)
            if not queued:
                return None
            job = fair_order(queued, running, self._last_starts(db, kinds, queued))[0]
            kind = job["kind"]
            db.execute(
                f"UPDATE {KINDS[kind]} SET status = 'running', worker = ?, run_token = ?, started_at = ?,"
                " heartbeat = ?, attempts = attempts + 1, progress = 0, phase = 'starting',"
                " version = version + 1 WHERE id = ?",
                (worker, run_token, now(), time.time(), job["id"]),
            )
            self._log_event(db, kind, job["id"])
            record = _decode(db.execute(f"SELECT * FROM {KINDS[kind]} WHERE id = ?", (job["id"],)).fetchone())
            return {**record, "kind": kind}

    @staticmethod
    def _queued(db: sqlite3.Connection, kinds: tuple[str, ...], project: str | None = None) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(kinds))
        sql = (
            f"SELECT kind, id, project, queued_at FROM jobs WHERE status = 'queued' AND kind IN ({marks})"
            " AND (not_before IS NULL OR not_before <= ?)"
        )
        return [dict(r) for r in db.execute(sql, (*kinds, time.time())).fetchall()]

    @staticmethod
    def _running(db: sqlite3.Connection, kinds: tuple[str, ...]) -> int:
        marks = ", ".join("?" * len(kinds))
        sql = f"SELECT COUNT(*) FROM jobs WHERE status = 'running' AND kind IN ({marks})"
        return db.execute(sql, kinds).fetchone()[0]

    @staticmethod
    def _last_starts(db: sqlite3.Connection, kinds: tuple[str, ...], queued: list[dict]) -> dict[str, str]:
        """{project: when its latest job of ``kinds`` started}, for the projects with queued jobs
        (one index lookup per table and project: ``(project, started_at)``)."""
        last: dict[str, str] = {}
        for project in sorted({j["project"] for j in queued}):
            for kind in kinds:
                row = db.execute(
                    f"SELECT MAX(started_at) FROM {KINDS[kind]} WHERE project = ?", (project,)
                ).fetchone()
                if row[0] and row[0] > last.get(project, ""):
                    last[project] = row[0]
        return last

    def queue_positions(self, kinds: tuple[str, ...] = COMPUTE) -> dict[tuple[str, str], int]:
        """{(kind, id): 1-based place in the queue} of every queued job of ``kinds``."""
        marks = ", ".join("?" * len(kinds))
        db = self._conn()
        queued = self._queued(db, kinds)
        if not queued:
            return {}
        running = dict(db.execute(
            f"SELECT project, COUNT(*) FROM jobs WHERE status = 'running' AND kind IN ({marks}) GROUP BY project", kinds
        ).fetchall())
        order = fair_order(queued, running, self._last_starts(db, kinds, queued))
        return {(j["kind"], j["id"]): place for place, j in enumerate(order, 1)}

    def list_jobs(
        self, project: str | None, statuses: tuple[str, ...], kind: str | None, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Jobs in ``statuses`` (of one project, or all; of one kind, or all), running ones first,
        then queued ones by their place in the queue, then the newest first."""
        where = [f"status IN ({', '.join('?' * len(statuses))})"]
        args: list[Any] = list(statuses)
        for column, value in (("project", project), ("kind", kind)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        clause = " AND ".join(where)
        db = self._conn()
        total = db.execute(f"SELECT COUNT(*) FROM jobs WHERE {clause}", args).fetchone()[0]
        live = set(statuses) <= {*ACTIVE, "paused"}
        # Finished jobs are paged by the database; live ones (as many as the queue holds) are
        # ordered here, by their places in the queue.
        page = "" if live else " LIMIT ? OFFSET ?"
        rows = [_decode(r) for r in db.execute(
            f"SELECT * FROM jobs WHERE {clause} ORDER BY created_at DESC, id{page}",
            (*args, limit, offset) if page else args,
        ).fetchall()]
        places = self.queue_positions(COMPUTE) if any(r["status"] == "queued" for r in rows) else {}
        if any(r["kind"] == "webhook" and r["status"] == "queued" for r in rows):
            places.update(self.queue_positions(("webhook",)))
        for row in rows:
            row["position"] = places.get((row["kind"], row["id"]))
        if not live:
            return rows, total
        rows.sort(key=lambda r: (r["status"] != "running", r["position"] is None, r["position"] or 0))
        return rows[offset:offset + limit], total

    def beat(self, runs: dict[tuple[str, str], str]) -> None:
        """Record that the jobs ``{(kind, id): run_token}`` are alive."""
        if not runs:
            return
        stamp = time.time()
        with self.transaction() as db:
            for (kind, job_id), token in runs.items():
                db.execute(
                    f"UPDATE {KINDS[kind]} SET heartbeat = ? WHERE id = ? AND run_token = ? AND status = 'running'",
                    (stamp, job_id, token),
                )

    def stale_runs(self, older_than: float) -> list[dict[str, Any]]:
        """Running jobs whose last heartbeat is older than ``older_than`` (epoch seconds)."""
        rows = self._conn().execute(
            "SELECT kind, id FROM jobs WHERE status = 'running' AND (heartbeat IS NULL OR heartbeat < ?)",
            (older_than,),
        ).fetchall()
        return [job for kind, job_id in rows if (job := self.get_job(kind, job_id)) is not None]

    def jobs_by_key(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The current records of jobs ``(kind, id)`` that still exist."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in {k for k, _ in keys}:
            ids = [i for k, i in keys if k == kind]
            rows = self._conn().execute(
                f"SELECT * FROM {KINDS[kind]} WHERE id IN ({', '.join('?' * len(ids))})", tuple(ids)
            ).fetchall()
            found.update({(kind, r["id"]): {**_decode(r), "kind": kind} for r in rows})
        return found

    def has_queued(self, kinds: tuple[str, ...] = COMPUTE) -> bool:
        """Whether a job of ``kinds`` waits and may start now (a read: idle dispatchers take no write lock)."""
        marks = ", ".join("?" * len(kinds))
        row = self._conn().execute(
            f"SELECT 1 FROM jobs WHERE status = 'queued' AND kind IN ({marks})"
            " AND (not_before IS NULL OR not_before <= ?) LIMIT 1",
            (*kinds, time.time()),
        ).fetchone()
        return row is not None

    # -- sweeps ---------------------------------------------------------------------------

    def add_sweep(self, record: dict[str, Any]) -> None:
        """Queue a sweep."""
        keys = list(record)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO sweeps ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(_encode(record[k], k) for k in keys),
            )
            self._log_event(db, "sweep", record["id"])

    def get_sweep(self, sweep_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))

    def list_sweeps(
        self, offset: int, limit: int, dataset_id: str | None = None, project: str | None = None
    ) -> tuple[list[dict], int]:
        pairs = (("dataset_id", dataset_id), ("project", project))
        return self._page("sweeps", {k: v for k, v in pairs if v}, offset, limit)

    def delete_sweep(self, sweep_id: str) -> bool:
        with self.transaction() as db:
            self._cancel_deliveries(db, sweep_id, "sweep")
            return db.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,)).rowcount > 0

    def _cancel_deliveries(self, db: sqlite3.Connection, target_id: str, what: str) -> None:
        """Cancel the webhook deliveries of a resource being deleted (nothing to report on any more)."""
        db.execute(
            "UPDATE deliveries SET status = 'cancelled', run_token = NULL, finished_at = ?, version = version + 1,"
            " phase = ? WHERE target_id = ? AND status IN ('queued', 'running')",
            (now(), f"cancelled: its {what} was deleted", target_id),
        )

    def prune_deliveries(self, finished_before: str) -> int:
        """Forget deliveries that ended before ``finished_before`` (ISO time); their outcome stays
        on the resource's ``callback``. Returns how many."""
        with self.transaction() as db:
            return db.execute(
                "DELETE FROM deliveries WHERE status IN (?, ?, ?) AND finished_at < ?", (*TERMINAL, finished_before)
            ).rowcount

    # -- evaluations ------------------------------------------------------------------------

    def add_evaluation(self, record: dict[str, Any]) -> None:
        """Queue an evaluation."""
        keys = list(record)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO evaluations ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(_encode(record[k], k) for k in keys),
            )
            self._log_event(db, "evaluation", record["id"])

    def list_evaluations(self, model_id: str, offset: int, limit: int) -> tuple[list[dict], int]:
        """A page of a model's evaluations, newest first."""
        return self._page("evaluations", {"model_id": model_id}, offset, limit)

    def evaluation_ids(self, model_id: str) -> list[str]:
        """The ids of a model's evaluations."""
        rows = self._conn().execute("SELECT id FROM evaluations WHERE model_id = ?", (model_id,)).fetchall()
        return [r["id"] for r in rows]

    def delete_evaluation(self, evaluation_id: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM evaluations WHERE id = ?", (evaluation_id,)).rowcount > 0
    # -- batch scorings (kmeans.scorejob) ----------------------------------------------------

    SCORING_ARRAYS = ("labels", "distances", "anomalies")

    def scoring_path(self, scoring_id: str, part: str) -> Path:
        """A scoring's result file: ``labels``/``distances``/``anomalies`` (.npy), ``ids`` (.arrow) or
        ``parquet`` (the whole result as one Parquet file)."""
        suffix = {"ids": ".ids.arrow", "parquet": ".parquet"}.get(part, f".{part}.npy")
        return self.root / "scorings" / f"{scoring_id}{suffix}"

    def add_scoring(self, record: dict[str, Any]) -> None:
        """Queue a scoring."""
        keys = list(record)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO scorings ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                tuple(_encode(record[k], k) for k in keys),
            )
            self._log_event(db, "scoring", record["id"])

    def get_scoring(self, scoring_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM scorings WHERE id = ?", (scoring_id,))

    def list_scorings(self, model_id: str, offset: int, limit: int) -> tuple[list[dict], int]:
        return self._page("scorings", {"model_id": model_id}, offset, limit)

    def finish_scoring(self, scoring_id: str, run_token: str, staged: dict[str, Path], **fields: Any) -> bool:
        """Rename a scoring's staged result files into place and mark it succeeded, in the
        transaction that checks this run still owns it (else the files are discarded)."""
        try:
            with self.transaction() as db:
                if not self._update_job(db, "scoring", scoring_id, ("running",), run_token, status="succeeded",
                                        **fields):
                    return False
                for part, path in staged.items():
                    os.replace(path, self.scoring_path(scoring_id, part))
        finally:
            for path in staged.values():
                path.unlink(missing_ok=True)
        return True

    def delete_scoring(self, scoring_id: str) -> bool:
        with self.transaction() as db:
            self._cancel_deliveries(db, scoring_id, "scoring")
            gone = db.execute("DELETE FROM scorings WHERE id = ?", (scoring_id,)).rowcount > 0
        if gone:
            for part in (*self.SCORING_ARRAYS, "ids", "parquet"):
                self.scoring_path(scoring_id, part).unlink(missing_ok=True)
        return gone

    # -- webhook deliveries -----------------------------------------------------------------

    def enqueue_deliveries(self, make: Any) -> list[dict[str, Any]]:
        """Queue one delivery for each finished fit or sweep with a ``callback_url`` whose
        webhook is not queued yet; ``make(kind, record)`` gives the delivery's record. Exactly
        once per resource, whichever process asks first (and again after a crash: the
        resources' ``callback`` stays empty until the delivery is queued)."""
        made: list[dict[str, Any]] = []
        pending = (
            "SELECT * FROM {table} WHERE callback_url IS NOT NULL AND callback IS NULL"
            f" AND status IN ({', '.join('?' * len(TERMINAL))}) LIMIT 100"
        )
        if not any(self._conn().execute(pending.format(table=KINDS[k]), TERMINAL).fetchone() for k in COMPUTE):
            return made  # a read first: idle processes take no write lock every round
        with self.transaction() as db:
            for kind in COMPUTE:
                table = KINDS[kind]
                rows = db.execute(pending.format(table=table), TERMINAL).fetchall()
                for row in rows:
                    delivery = make(kind, _decode(row))
                    keys = list(delivery)
                    db.execute(
                        f"INSERT INTO deliveries ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                        tuple(_encode(delivery[k], k) for k in keys),
                    )
                    callback = {"state": "queued", "delivery_id": delivery["id"], "attempts": 0, "at": now()}
                    db.execute(f"UPDATE {table} SET callback = ? WHERE id = ?", (json.dumps(callback), row["id"]))
                    made.append(delivery)
        return made

    def end_delivery_attempt(
        self, delivery: dict[str, Any], run_token: str, callback: dict[str, Any], **fields: Any
    ) -> bool:
        """Record one delivery attempt on the delivery and on the resource it reports, together."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            changed = db.execute(
                f"UPDATE deliveries SET {sets}, version = version + 1 WHERE id = ? AND run_token = ?"
                " AND status = 'running'",
                (*(_encode(v, k) for k, v in fields.items()), delivery["id"], run_token),
            ).rowcount > 0
            if changed:
                db.execute(
                    f"UPDATE {KINDS[delivery['target_kind']]} SET callback = ? WHERE id = ?",
                    (json.dumps(callback), delivery["target_id"]),
                )
                if "status" in fields:
                    self._log_event(db, "webhook", delivery["id"])
            return changed

    def set_callback(self, kind: str, resource_id: str, callback: dict[str, Any]) -> None:
        """Show a delivery's state on the resource it reports."""
        with self.transaction() as db:
            db.execute(f"UPDATE {KINDS[kind]} SET callback = ? WHERE id = ?", (json.dumps(callback), resource_id))


def fair_order(
    queued: list[dict[str, Any]], running: dict[str, int], last_start: dict[str, str]
) -> list[dict[str, Any]]:
    """The order queued jobs start in: first-in first-out within a project, round-robin between
    projects. The round starts with the project that runs the fewest jobs now, then the one
    whose last job started longest ago, so that one project's backlog never starves another."""
    by_project: dict[str, list[dict[str, Any]]] = {}
    for job in sorted(queued, key=lambda j: (j.get("queued_at") or "", j["id"])):
        by_project.setdefault(job["project"], []).append(job)
    projects = sorted(by_project, key=lambda p: (running.get(p, 0), last_start.get(p) or "", p))
    order = []
    for turn in itertools.zip_longest(*(by_project[p] for p in projects)):
        order.extend(job for job in turn if job is not None)
    return order
