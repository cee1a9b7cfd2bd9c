"""Choosing k (issue 16, item 5): the consensus rule weighs more than silhouette, names the rule,
the runner-up and each measure's pick; `rule` (at creation, or `?rule=` later) ranks by another;
`stability_runs` reports per k the ARI between bootstrap refits; a feature whose scale decides
alone is warned of. Each measure's pick is checked against the per-k figures, and those against
scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from api_helpers import assert_problem
from api_helpers import json_dataset as dataset
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score
from starlette.testclient import TestClient

from kmeans.config import Settings
from kmeans.sweeps import elbow, recommend
from server import build_app
from tests.conftest import local_client, wait_until_done

# Four blobs in two far-apart pairs: silhouette alone says 2, Calinski-Harabasz and the
# inertia elbow say 4 (the truth), Davies-Bouldin says 3.
PAIRS, TRUTH = make_blobs(600, centers=[(0, 0), (8, 0), (30, 0), (38, 0)], cluster_std=1.0, random_state=0)


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("rules") / "data", max_concurrent_fits=2)
    with local_client(build_app(settings, app_class)) as client:
        yield client


def swept(api: TestClient, data: np.ndarray, **body) -> dict:
    ds = dataset(api, data)
    response = api.post("/kmeans/sweeps", json={"dataset_id": ds, "k_min": 2, "k_max": 8,
                                                "params": {"random_state": 0}, **body})
    assert response.status_code == 202, response.text
    done = wait_until_done(api, f"/kmeans/sweeps/{response.json()['id']}", timeout=120)
    assert done["status"] == "succeeded", done
    return done


@pytest.fixture(scope="module")
def pairs(api) -> dict:
    return swept(api, PAIRS)


def test_consensus_finds_four_where_silhouette_alone_says_two(api, pairs):
    assert pairs["rule"] == pairs["rule_requested"] == "consensus"
    assert pairs["recommended_k"] == 4
    votes = pairs["votes"]
    assert votes["max_silhouette"] == 2 and votes["max_calinski_harabasz"] == 4 and votes["elbow"] == 4
    assert pairs["runner_up"] == 2  # one vote, and the best silhouette of the rest
    by_rule = api.get(f"/kmeans/sweeps/{pairs['id']}", params={"rule": "max_silhouette"}).json()
    assert by_rule["recommended_k"] == 2 and by_rule["rule"] == "max_silhouette"
    assert api.get(f"/kmeans/sweeps/{pairs['id']}").json()["recommended_k"] == 4  # nothing stored changed


def test_each_vote_is_its_measure_s_best_k(api, pairs):
    results = pairs["results"]
    best = {
        "max_silhouette": max(results, key=lambda r: r["silhouette"])["k"],
        "max_calinski_harabasz": max(results, key=lambda r: r["calinski_harabasz"])["k"],
        "min_davies_bouldin": min(results, key=lambda r: r["davies_bouldin"])["k"],
        "elbow": elbow(results),
    }
    assert pairs["votes"] == best
    for rule, k in best.items():
        shown = api.get(f"/kmeans/sweeps/{pairs['id']}", params={"rule": rule}).json()
        assert (shown["recommended_k"], shown["rule"]) == (k, rule)
        assert shown["runner_up"] not in (None, k)
    four = next(r for r in results if r["k"] == 4)
    labels = KMeans(4, random_state=0, n_init="auto").fit_predict(PAIRS)
    assert four["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(PAIRS, labels), rel=1e-6)


def test_the_elbow_is_the_sharpest_bend_of_the_inertia_curve():
    results = [{"k": k, "inertia": v} for k, v in zip(range(1, 7), [100, 60, 20, 15, 12, 10], strict=True)]
    assert elbow(results) == 3  # 40 into it, 5 after: 8 times
    assert elbow(results[:2]) is None
    assert elbow([{"k": k, "inertia": 10.0 - k} for k in range(1, 6)]) is None  # a straight line has none
    flat = [{"k": k, "inertia": v} for k, v in zip(range(2, 6), [50.0, 30.0, 1.0, 1.0], strict=True)]
    assert elbow(flat) == 4  # nothing left to gain after 4


def test_consensus_finds_the_three_wine_cultivars(api):
    from sklearn.datasets import load_wine

    done = swept(api, load_wine().data, params={"random_state": 0, "standardize": True})
    assert done["recommended_k"] == 3, done["votes"]


def test_a_single_k_is_only_k_and_ties_go_to_silhouette_then_the_smaller_k():
    assert recommend([{"k": 3, "inertia": 1.0}])["rule"] == "only_k"
    tied = [
        {"k": 2, "inertia": 9.0, "silhouette": 0.5, "calinski_harabasz": 10.0, "davies_bouldin": 0.9},
        {"k": 3, "inertia": 5.0, "silhouette": 0.6, "calinski_harabasz": 5.0, "davies_bouldin": 0.4},
    ]
    chosen = recommend(tied)  # 2: Calinski-Harabasz; 3: silhouette, Davies-Bouldin (no elbow with two k)
    assert (chosen["recommended_k"], chosen["runner_up"]) == (3, 2)


def test_stability_runs_measure_each_k_and_unstable_k_cannot_win(api):
    done = swept(api, PAIRS, stability_runs=3)
    assert done["stability_runs"] == 3
    stability = {r["k"]: r["stability"] for r in done["results"]}
    assert all(s["runs"] == 3 and -1 <= s["mean"] <= 1 and s["std"] >= 0 for s in stability.values())
    assert stability[4]["mean"] > 0.95 and stability[2]["mean"] > 0.95  # both real structures
    assert min(s["mean"] for s in stability.values()) < stability[4]["mean"]
    assert done["recommended_k"] == 4 and done["votes"]["max_stability"] in (2, 4)
    assert stability[done["recommended_k"]]["mean"] >= 0.75
    most = api.get(f"/kmeans/sweeps/{done['id']}", params={"rule": "max_stability"}).json()
    assert most["recommended_k"] == max(stability, key=lambda k: (stability[k]["mean"], k))


def test_max_stability_needs_stability_runs(api, pairs):
    response = api.post("/kmeans/sweeps", json={"dataset_id": pairs["dataset_id"], "k_min": 2, "k_max": 3,
                                                "rule": "max_stability"})
    assert_problem(response, 422, "stability_runs")
    assert_problem(api.get(f"/kmeans/sweeps/{pairs['id']}", params={"rule": "max_stability"}), 422, "stability")
    assert api.get(f"/kmeans/sweeps/{pairs['id']}", params={"rule": "best"}).status_code == 400


@pytest.mark.both_apps
def test_a_rule_asked_at_creation_is_the_answer(api):
    done = swept(api, PAIRS, rule="max_silhouette")
    assert (done["recommended_k"], done["rule"], done["rule_requested"]) == (2, "max_silhouette", "max_silhouette")


def test_a_feature_whose_scale_decides_alone_is_warned_of_and_standardizing_finds_the_truth(api):
    data, truth = make_blobs(500, centers=5, n_features=3, cluster_std=0.6, random_state=3)
    noisy = data.copy()
    noisy[:, 0] = np.random.default_rng(0).normal(0, 5000, len(data))  # a wide column of noise
    plain = swept(api, noisy)
    assert len(plain["warnings"]) == 1 and "'x1'" in plain["warnings"][0] and "standardize" in plain["warnings"][0]
    scaled = swept(api, data, params={"random_state": 0, "standardize": True})
    assert scaled["warnings"] == [] and scaled["recommended_k"] == 5
