"""Persistent state: SQLite for metadata, ``.npy`` files for arrays, all under one data dir.

Every process (each gunicorn worker, each restart) opens the same files, so nothing lives
only in memory. Arrays are written to a temporary file and renamed into place before the
row that points at them is committed, so a crash never leaves a row without its data.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kmeans.errors import Conflict, Unavailable

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
CREATE INDEX IF NOT EXISTS models_dataset ON models (dataset_id);
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
"""
# Columns added after data dirs already existed: added on open, to new and old tables alike.
MIGRATIONS = {
    # Column types (NULL: a dataset from before them, all numeric), the id column, statistics.
    "datasets": {"project": "TEXT NOT NULL DEFAULT 'default'", "schema": "TEXT", "id_column": "TEXT", "stats": "TEXT"},
    "models": {"project": "TEXT NOT NULL DEFAULT 'default'"},
    "sweeps": {"project": "TEXT NOT NULL DEFAULT 'default'"},
}
DEFAULT_PROJECT = "default"

# The newest upload of a file name and content whose dataset still exists, in one project.
SAME_UPLOAD = (
    "SELECT u.* FROM uploads u JOIN datasets d ON d.id = u.dataset_id"
    " WHERE u.filename = ? AND u.sha256 = ? AND d.project = ? ORDER BY u.job_id DESC LIMIT 1"
)
JSON_FIELDS = ("schema", "stats", "columns", "params", "error", "cluster_sizes", "callback", "preprocessing", "results")
ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


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


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class Store:
    """Datasets, models and classic uploads under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        for sub in ("datasets", "models", "tmp"):
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
            for table, columns in MIGRATIONS.items():
                have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, decl in columns.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
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
        """A fresh path in the data dir's tmp folder (same file system, so rename is atomic)."""
        return self.root / "tmp" / f"{secrets.token_hex(12)}{suffix}"

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

    def centers_path(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.centers.npy"

    def labels_path(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.labels.npy"

    def save_array(self, path: Path, array: np.ndarray | list[np.ndarray]) -> None:
        """Write an array (or its row chunks, one after the other) to ``path`` as ``.npy``,
        atomically: temp file, fsync, rename. Chunks are never concatenated in memory."""
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
            os.replace(tmp, path)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()

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
                    tuple(_encode(record[k]) for k in keys),
                )
        except BaseException:
            for path in paths:
                path.unlink(missing_ok=True)
            raise

    def set_dataset_stats(self, dataset_id: str, stats: list[dict[str, Any]]) -> None:
        """Keep a dataset's column statistics (it never changes, so they are computed once)."""
        with self.transaction() as db:
            db.execute("UPDATE datasets SET stats = ? WHERE id = ?", (json.dumps(stats), dataset_id))

    def get_dataset(self, dataset_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))

    def list_datasets(self, offset: int, limit: int, project: str | None = None) -> tuple[list[dict], int]:
        return self._page("datasets", {"project": project} if project else {}, offset, limit)

    def delete_dataset(self, dataset_id: str) -> bool:
        """Remove a dataset unless a fit on it is still queued or running."""
        with self.transaction() as db:
            busy = db.execute(
                "SELECT id FROM models WHERE dataset_id = ? AND status IN (?, ?) LIMIT 1",
                (dataset_id, *ACTIVE),
            ).fetchone()
            if busy is not None:
                raise Conflict(
                    f"dataset {dataset_id} is in use by model {busy['id']}, which is still fitting"
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
                tuple(_encode(record[k]) for k in keys),
            )
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
        """Set ``fields`` on a model if it still exists (in one of ``only_if_status``, and still
        run by the run whose token is ``owner``). Every change bumps ``version``, the id of live events."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE models SET {sets}, version = version + 1 WHERE id = ?"
        args: tuple = (*(_encode(v) for v in fields.values()), model_id)
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' * len(only_if_status))})"
            args += only_if_status
        if owner is not None:
            sql += " AND run_token = ?"
            args += (owner,)
        with self.transaction() as db:
            return db.execute(sql, args).rowcount > 0

    def finish_model(
        self, model_id: str, run_token: str, centers: np.ndarray, labels: np.ndarray, **fields: Any
    ) -> bool:
        """Store a fit's arrays, then mark it succeeded, if this run still owns it; else discard them."""
        self.save_array(self.centers_path(model_id), centers)
        self.save_array(self.labels_path(model_id), labels)
        if self.update_model(model_id, ("running",), run_token, status="succeeded", **fields):
            return True
        self._remove_model_files(model_id)
        return False

    def claim_next(self, worker: str, max_running: int, run_token: str) -> dict[str, Any] | None:
        """Take the oldest queued model for ``worker`` if fewer than ``max_running`` fits run."""
        with self.transaction() as db:
            running = db.execute("SELECT COUNT(*) FROM models WHERE status = 'running'").fetchone()[0]
            if running >= max_running:
                return None
            row = db.execute(
                "SELECT id FROM models WHERE status = 'queued' ORDER BY queued_at, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE models SET status = 'running', worker = ?, run_token = ?, started_at = ?,"
                " heartbeat = ?, attempts = attempts + 1, progress = 0, phase = 'starting',"
                " version = version + 1 WHERE id = ?",
                (worker, run_token, now(), time.time(), row["id"]),
            )
            return _decode(db.execute("SELECT * FROM models WHERE id = ?", (row["id"],)).fetchone())

    def beat(self, runs: dict[str, str]) -> None:
        """Record that the fits ``{model_id: run_token}`` are alive."""
        if not runs:
            return
        stamp = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE models SET heartbeat = ? WHERE id = ? AND run_token = ? AND status = 'running'",
                [(stamp, model_id, token) for model_id, token in runs.items()],
            )

    def stale_runs(self, older_than: float) -> list[dict[str, Any]]:
        """Running models whose last heartbeat is older than ``older_than`` (epoch seconds)."""
        rows = self._conn().execute(
            "SELECT * FROM models WHERE status = 'running' AND (heartbeat IS NULL OR heartbeat < ?)",
            (older_than,),
        ).fetchall()
        return [_decode(r) for r in rows]

    def models_by_id(self, model_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not model_ids:
            return {}
        rows = self._conn().execute(
            f"SELECT * FROM models WHERE id IN ({', '.join('?' * len(model_ids))})", tuple(model_ids)
        ).fetchall()
        return {r["id"]: _decode(r) for r in rows}

    def delete_model(self, model_id: str) -> bool:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount
            db.execute("DELETE FROM model_versions WHERE model_id = ?", (model_id,))
            db.execute("UPDATE uploads SET model_id = NULL WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM idempotency_keys WHERE model_id = ?", (model_id,))
        if gone:
            self._remove_model_files(model_id)
        return bool(gone)

    def _remove_model_files(self, model_id: str) -> None:
        self.centers_path(model_id).unlink(missing_ok=True)
        self.labels_path(model_id).unlink(missing_ok=True)

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

    # -- health ---------------------------------------------------------------------------

    def check(self) -> None:
        """Raise Unavailable unless the database answers."""
        try:
            self._conn().execute("SELECT 1 FROM datasets LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"the data directory's database cannot be read: {exc}") from None

    # -- queue helpers --------------------------------------------------------------------

    def has_queued(self) -> bool:
        """Whether any fit waits in the queue (a read, so idle dispatchers take no write lock)."""
        return self._conn().execute("SELECT 1 FROM models WHERE status = 'queued' LIMIT 1").fetchone() is not None

    def claim_callback(self, model_id: str) -> bool:
        """Take the duty of calling a finished model's webhook (exactly one process gets it)."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE models SET callback = ? WHERE id = ? AND callback IS NULL AND callback_url IS NOT NULL"
                " AND status IN (?, ?, ?)",
                (json.dumps({"state": "sending"}), model_id, *TERMINAL),
            ).rowcount > 0
