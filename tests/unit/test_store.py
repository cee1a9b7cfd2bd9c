"""kmeans.store.Store without HTTP: job numbering, concurrency, guards and atomic files."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kmeans.errors import Conflict, NotFound, Unprocessable
from kmeans.store import Store, new_id, now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def add_dataset(store: Store, values: np.ndarray | None = None) -> str:
    values = np.array([[1.0, 2.0], [3.0, 4.0]]) if values is None else values
    record = {
        "id": new_id("ds"),
        "name": "d.csv",
        "rows": int(values.shape[0]),
        "n_features": int(values.shape[1]),
        "columns": [f"x{i}" for i in range(1, values.shape[1] + 1)],
        "sha256": "0" * 64,
        "size_bytes": 8,
        "created_at": now(),
    }
    store.add_dataset(record, values)
    return record["id"]


def add_model(store: Store, dataset_id: str, status: str = "queued") -> str:
    record = {
        "id": new_id("m"),
        "dataset_id": dataset_id,
        "status": status,
        "params": {"n_clusters": 2},
        "created_at": now(),
        "rows": 2,
        "n_features": 2,
        "columns": ["x1", "x2"],
        "worker": "test:1",
    }
    store.add_model(record)
    return record["id"]


def temp_files(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "tmp").iterdir())


# -- classic job ids -----------------------------------------------------------------------


def test_job_ids_count_from_zero(store):
    dataset_id = add_dataset(store)
    ids = [store.add_upload(f"f{i}.csv", f"{i}" * 64, dataset_id, "default") for i in range(3)]
    assert ids == [0, 1, 2]
    assert store.get_upload(1)["filename"] == "f1.csv"
    assert store.get_upload(3) is None


def test_job_ids_continue_in_a_new_store_on_the_same_dir(store):
    dataset_id = add_dataset(store)
    store.add_upload("a.csv", "a" * 64, dataset_id, "default")
    again = Store(store.root)
    assert again.add_upload("b.csv", "b" * 64, dataset_id, "default") == 1


def test_job_ids_are_distinct_and_consecutive_under_concurrency(store):
    dataset_id = add_dataset(store)
    start = threading.Barrier(8)
    got: dict[int, int] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            got[i] = store.add_upload(f"f{i}.csv", f"{i}" * 64, dataset_id, "default")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(got.values()) == list(range(8))
    # each thread got back the job_id of its own upload
    for i, job_id in got.items():
        assert store.get_upload(job_id)["filename"] == f"f{i}.csv"


def test_job_ids_from_separate_stores_on_one_dir_do_not_collide(tmp_path):
    # Like several gunicorn workers: each has its own Store (and connections) on the same files.
    stores = [Store(tmp_path / "data") for _ in range(4)]
    dataset_id = add_dataset(stores[0])
    ids: list[int] = []

    def worker(s: Store, i: int) -> None:
        for j in range(5):
            ids.append(s.add_upload(f"{i}-{j}.csv", "c" * 64, dataset_id, "default"))

    threads = [threading.Thread(target=worker, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(ids) == list(range(20))


def test_find_upload_matches_name_and_content(store):
    dataset_id = add_dataset(store)
    store.add_upload("a.csv", "1" * 64, dataset_id, "default")
    assert store.find_upload("a.csv", "1" * 64, "default")["job_id"] == 0
    assert store.find_upload("a.csv", "2" * 64, "default") is None
    assert store.find_upload("b.csv", "1" * 64, "default") is None
    # The same file in another project is another upload: job_ids never lead across projects.
    assert store.find_upload("a.csv", "1" * 64, "team-b") is None


def test_find_upload_ignores_uploads_whose_dataset_was_deleted(store):
    dataset_id = add_dataset(store)
    store.add_upload("a.csv", "1" * 64, dataset_id, "default")
    assert store.delete_dataset(dataset_id)
    assert store.find_upload("a.csv", "1" * 64, "default") is None


# -- guards --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_dataset_refuses_while_a_fit_on_it_is_active(store, status):
    dataset_id = add_dataset(store)
    model_id = add_model(store, dataset_id, status)
    with pytest.raises(Conflict) as caught:
        store.delete_dataset(dataset_id)
    assert model_id in caught.value.detail
    assert store.get_dataset(dataset_id) is not None
    assert store.dataset_path(dataset_id).exists()


def test_delete_dataset_once_its_fits_are_done(store):
    dataset_id = add_dataset(store)
    model_id = add_model(store, dataset_id)
    assert store.update_model(model_id, only_if_status=("queued",), status="succeeded")
    assert store.delete_dataset(dataset_id) is True
    assert store.get_dataset(dataset_id) is None
    assert not store.dataset_path(dataset_id).exists()
    assert store.delete_dataset(dataset_id) is False


def test_update_model_only_if_status(store):
    model_id = add_model(store, add_dataset(store), "succeeded")
    assert store.update_model(model_id, only_if_status=("queued", "running"), status="failed") is False
    assert store.get_model(model_id)["status"] == "succeeded"


def test_finish_model_of_a_deleted_model_leaves_no_files(store):
    model_id = add_model(store, add_dataset(store), "running")
    store.update_model(model_id, run_token="run-1")
    assert store.delete_model(model_id)
    finished = store.finish_model(model_id, "run-1", np.zeros((2, 2)), np.zeros(2, dtype=np.int32), finished_at=now())
    assert finished is False
    assert not store.centers_path(model_id).exists()
    assert not store.labels_path(model_id).exists()
    assert store.get_model(model_id) is None
    assert temp_files(store) == []


def test_only_the_run_that_owns_a_model_finishes_it(store):
    model_id = add_model(store, add_dataset(store), "running")
    store.update_model(model_id, run_token="run-2")
    centers, labels = np.array([[1.0, 2.0]]), np.zeros(2, dtype=np.int32)
    assert store.finish_model(model_id, "run-1", centers, labels, finished_at=now()) is False
    assert store.get_model(model_id)["status"] == "running"
    assert not store.centers_path(model_id).exists()
    assert store.finish_model(model_id, "run-2", centers, labels, finished_at=now()) is True
    assert store.get_model(model_id)["status"] == "succeeded"
    assert Store.load_array(store.centers_path(model_id)).tolist() == [[1.0, 2.0]]


def test_delete_model_unlinks_it_from_uploads(store):
    dataset_id = add_dataset(store)
    model_id = add_model(store, dataset_id, "succeeded")
    job_id = store.add_upload("a.csv", "1" * 64, dataset_id, "default")
    store.set_upload_model(job_id, model_id)
    assert store.delete_model(model_id)
    assert store.get_upload(job_id)["model_id"] is None


def test_lists_are_newest_first_and_paged(store):
    ids = [add_dataset(store) for _ in range(4)]
    items, total = store.list_datasets(offset=1, limit=2)
    assert total == 4
    assert [d["id"] for d in items] == ids[::-1][1:3]


# -- files ---------------------------------------------------------------------------------


def test_save_array_round_trips_and_leaves_no_temp_file(store):
    values = np.random.default_rng(0).normal(size=(50, 3))
    path = store.root / "datasets" / "x.npy"
    store.save_array(path, values)
    assert np.array_equal(Store.load_array(path), values)
    assert temp_files(store) == []


def test_save_array_replaces_an_existing_file(store):
    path = store.root / "models" / "m.labels.npy"
    store.save_array(path, np.array([1, 2, 3], dtype=np.int32))
    store.save_array(path, np.array([4, 5], dtype=np.int32))
    loaded = Store.load_array(path)
    assert loaded.tolist() == [4, 5]
    assert loaded.dtype == np.int32
    assert temp_files(store) == []


def test_save_array_that_fails_leaves_no_temp_file(store):
    with pytest.raises(OSError):
        store.save_array(store.root / "no-such-dir" / "x.npy", np.zeros(3))
    assert temp_files(store) == []
    assert not (store.root / "no-such-dir").exists()


def test_add_dataset_stores_values_by_id(store):
    values = np.array([[1.5, 2.5], [3.5, 4.5], [5.5, 6.5]])
    dataset_id = add_dataset(store, values)
    assert store.dataset_path(dataset_id).name == f"{dataset_id}.npy"
    assert np.array_equal(Store.load_array(store.dataset_path(dataset_id)), values)
    record = store.get_dataset(dataset_id)
    assert (record["rows"], record["n_features"], record["columns"]) == (3, 2, ["x1", "x2"])
    assert temp_files(store) == []


def test_ids_are_stored_at_their_own_width_and_read_back_in_pages(store):
    ids = ["x" * 10_000] + [f"r{i}" for i in range(20_000)]  # one long id must not widen every row
    path = store.ids_path("ds_ids")
    path.parent.mkdir(parents=True, exist_ok=True)
    store.save_ids(path, ids)
    assert path.stat().st_size < 2 * sum(len(i) for i in ids) + 200_000
    assert store.load_ids("ds_ids") == ids
    assert store.load_ids("ds_ids", 5, 3) == ids[5:8] and store.load_ids("ds_ids", 30_000, 10) == []
    assert store.load_ids("ds_none") is None and temp_files(store) == []


# -- model versions ------------------------------------------------------------------------


class FirstVersion:
    """A ``first()`` callback that counts its calls."""

    def __init__(self, centers=((0.0, 0.0), (1.0, 1.0)), counts=(2.0, 3.0)) -> None:
        self.calls = 0
        self.centers, self.counts = [list(c) for c in centers], list(counts)

    def __call__(self):
        self.calls += 1
        return np.array(self.centers), np.array(self.counts), "2024-01-01T00:00:00+00:00"


def plus_one(rows: int = 1):
    """A ``compute`` that adds one to every count (and records what it was given)."""
    seen = []

    def compute(current):
        seen.append(current)
        return np.asarray(current["centers"]), np.asarray(current["counts"]) + 1, rows, "data"

    compute.seen = seen
    return compute


def push_events(store: Store, model_id: str) -> list[dict]:
    return [e for e in store.events_since(0, None, 1000) if e["resource_id"] == model_id and e["kind"] != "fit"]


def test_version_one_is_recorded_from_first_once_and_only_when_missing(store):
    model_id = add_model(store, add_dataset(store), status="succeeded")
    first = FirstVersion()
    current, items = store.list_versions(model_id, first)
    assert current == 1 and first.calls == 1
    assert [(v["version"], v["source"], v["rows_added"]) for v in items] == [(1, "fit", 0)]
    assert items[0]["centers"] == first.centers and items[0]["counts"] == first.counts
    assert items[0]["created_at"] == "2024-01-01T00:00:00+00:00"
    assert store.get_version(model_id, 1, first)["counts"] == [2.0, 3.0] and first.calls == 1
    with pytest.raises(NotFound, match="no version 2"):
        store.get_version(model_id, 2, first)
    assert store.version_centers(model_id, 1) == first.centers
    assert store.version_centers(model_id, 2) is None


def test_seed_version_records_version_one_and_first_is_not_called(store):
    model_id = add_model(store, add_dataset(store), status="succeeded")
    store.seed_version(model_id, np.array([[5.0, 6.0]]), np.array([7.0]))
    first = FirstVersion()
    row = store.get_version(model_id, 1, first)
    assert (row["source"], row["centers"], row["counts"], first.calls) == ("import", [[5.0, 6.0]], [7.0], 0)


def test_append_version_makes_the_next_version_current_and_logs_its_event(store):
    model_id = add_model(store, add_dataset(store), status="succeeded")
    first = FirstVersion()
    before = store.get_model(model_id)["version"]
    compute = plus_one(rows=4)
    row = store.append_version(model_id, first, compute, event="push")
    assert compute.seen[0]["version"] == 1 and compute.seen[0]["counts"] == [2.0, 3.0]
    assert (row["version"], row["counts"], row["rows_added"], row["source"]) == (2, [3.0, 4.0], 4, "data")
    model = store.get_model(model_id)
    assert model["center_version"] == 2 and model["version"] == before + 1
    events = push_events(store, model_id)
    assert [(e["kind"], e["project"], e["data"]) for e in events] == [
        ("push", "default", {"version": 2, "rows_added": 4})
    ]
    # a restore starts from the version it names, not the current one
    compute = plus_one(rows=0)
    row = store.append_version(model_id, first, compute, base=1, event="restore")
    assert compute.seen[0]["version"] == 1 and (row["version"], row["counts"]) == (3, [3.0, 4.0])
    assert push_events(store, model_id)[-1]["data"] == {"version": 3, "rows_added": 0}
    # without an event kind, nothing is logged
    store.append_version(model_id, first, plus_one())
    assert len(push_events(store, model_id)) == 2 and first.calls == 1
    assert store.list_versions(model_id, first)[0] == 4


def test_append_version_writes_nothing_when_compute_fails_or_a_version_is_missing(store):
    model_id = add_model(store, add_dataset(store), status="succeeded")
    first = FirstVersion()

    def fails(current):
        raise ValueError("bad rows")

    with pytest.raises(ValueError):
        store.append_version(model_id, first, fails, event="push")
    with pytest.raises(NotFound, match="no version 7"):
        store.append_version(model_id, first, plus_one(), base=7, event="restore")
    with pytest.raises(NotFound, match="no model"):
        store.append_version("m_0000000000000000", first, plus_one(), event="push")
    # the first transaction rolled back its version 1 too: it is recorded again, once
    assert store.list_versions(model_id, first) == (1, [store.get_version(model_id, 1, first)])
    assert store.get_model(model_id)["center_version"] is None and push_events(store, model_id) == []


def test_concurrent_appends_from_separate_stores_are_all_applied(tmp_path):
    store = Store(tmp_path / "data")
    model_id = add_model(store, add_dataset(store), status="succeeded")
    first = FirstVersion()
    errors: list[BaseException] = []

    def worker() -> None:
        mine = Store(tmp_path / "data")  # another connection, as another process would have
        try:
            for _ in range(10):
                mine.append_version(model_id, first, plus_one(), event="push")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    current, items = store.list_versions(model_id, first)
    assert current == 41 and [v["version"] for v in items] == list(range(1, 42))
    assert items[-1]["counts"] == [42.0, 43.0] and first.calls == 1
    assert sorted(e["data"]["version"] for e in push_events(store, model_id)) == list(range(2, 42))


def test_temp_files_of_dead_processes_are_removed_and_live_ones_kept(store):
    import subprocess

    from kmeans.store import LEFTOVER_SECONDS, temp_name

    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp = store.root / "tmp"
    mine = store.temp_path(".part")
    mine.write_bytes(b"still being written")
    gone = tmp / temp_name(".part").replace(f"~{os.getpid()}~", f"~{dead.pid}~")
    gone.write_bytes(b"left by a kill -9")
    elsewhere = tmp / f"another-host~{dead.pid}~abc.part"
    elsewhere.write_bytes(b"another host's")
    ancient = tmp / "0123456789abcdef01234567.npy"  # a name from before names carried owners
    ancient.write_bytes(b"old")
    os.utime(ancient, (time.time() - LEFTOVER_SECONDS - 60,) * 2)
    assert store.remove_leftovers() == 2
    assert sorted(p.name for p in tmp.iterdir()) == sorted([mine.name, elsewhere.name])


def test_the_store_never_writes_a_non_finite_value(store):
    model_id = add_model(store, add_dataset(store), "running")
    store.update_model(model_id, run_token="run")
    before = store.get_model(model_id)
    for fields in ({"inertia": float("inf")}, {"metrics": {"silhouette": float("nan")}}, {"params": {"tol": -np.inf}}):
        with pytest.raises(Unprocessable, match="non-finite"):
            store.update_model(model_id, **fields)
        assert store.get_model(model_id) == before
    with pytest.raises(Unprocessable, match="non-finite"):
        store.finish_model(model_id, "run", np.array([[np.inf, 0.0]]), np.zeros(2, dtype=np.int32), finished_at=now())
    assert store.get_model(model_id) == before and not store.centers_path(model_id).exists()
    assert temp_files(store) == []
