"""Understanding clusters (issue 16, items 1, 7, 8): profiles, cluster names, readable pictures."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from api_helpers import CSV, assert_problem, csv_lines, fit
from api_helpers import json_dataset as dataset
from PIL import Image
from sklearn.datasets import load_wine
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("insight") / "data", max_concurrent_fits=2)
    with local_client(build_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def wine(api) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """The wine data fitted standardized with k=3, the frame, and the model's labels."""
    bunch = load_wine(as_frame=True)
    frame = bunch.data
    ds = dataset(api, frame.to_numpy(), list(frame.columns))
    model = fit(api, ds, n_clusters=3, random_state=0, standardize=True)
    assert model["status"] == "succeeded", model
    labels = np.asarray(api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"])
    return model, frame, labels


def description(png: bytes) -> str:
    """The PNG's Description text chunk (what the picture shows, in words)."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 150
    return image.text["Description"]


# -- profiles ------------------------------------------------------------------------------


def test_profile_of_wine_matches_pandas(api, wine):
    model, frame, labels = wine
    response = api.get(f"/kmeans/models/{model['id']}/profile")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["model_id"] == model["id"] and doc["n_clusters"] == 3 and doc["rows"] == len(frame)
    assert doc["rows_left_out"] == 0
    overall_mean, overall_std = frame.mean(), frame.std()
    grouped = frame.groupby(labels)
    for cluster in doc["clusters"]:
        c = cluster["cluster"]
        assert cluster["size"] == int((labels == c).sum()) == model["cluster_sizes"][c]
        assert cluster["share"] == pytest.approx((labels == c).mean())
        by_name = {f["name"]: f for f in cluster["features"]}
        assert set(by_name) == set(frame.columns)
        for name, entry in by_name.items():
            assert entry["mean"] == pytest.approx(grouped[name].mean()[c], rel=1e-12)
            assert entry["median"] == pytest.approx(grouped[name].median()[c], rel=1e-12)
            assert entry["std"] == pytest.approx(grouped[name].std()[c], rel=1e-9)
            expected = (grouped[name].mean()[c] - overall_mean[name]) / overall_std[name]
            assert entry["difference"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        # Ranked by how far the cluster's mean is from all rows', in overall standard deviations.
        sizes = [abs(f["difference"]) for f in cluster["features"]]
        assert sizes == sorted(sizes, reverse=True)
        assert [f["rank"] for f in cluster["features"]] == list(range(1, len(frame.columns) + 1))
        top = cluster["features"][0]
        assert cluster["summary"].startswith(f"cluster {c} ({round(cluster['share'] * 100)}%): "
                                             f"{top['name']} {top['difference']:+.1f} sd")
    overall = {f["name"]: f for f in doc["overall"]}
    assert [f["name"] for f in doc["overall"]] == list(frame.columns)
    for name in frame.columns:
        assert overall[name]["mean"] == pytest.approx(overall_mean[name], rel=1e-12)
        assert overall[name]["median"] == pytest.approx(frame[name].median(), rel=1e-12)
        assert overall[name]["std"] == pytest.approx(overall_std[name], rel=1e-12)


def test_profile_of_wine_finds_the_cultivars_markers(api, wine):
    """The cluster holding most of cultivar 0 stands out by its high proline (as the data's
    documentation says of that cultivar), which the profile puts among its top features."""
    model, _, labels = wine
    target = load_wine().target
    cluster = int(np.bincount(labels[target == 0]).argmax())
    doc = api.get(f"/kmeans/models/{model['id']}/profile").json()
    top = [f["name"] for f in doc["clusters"][cluster]["features"][:5]]
    assert "proline" in top
    proline = next(f for f in doc["clusters"][cluster]["features"] if f["name"] == "proline")
    assert proline["difference"] > 1


def test_profile_as_csv(api, wine):
    model, frame, labels = wine
    lines = csv_lines(api.get(f"/kmeans/models/{model['id']}/profile", headers={"Accept": CSV}))
    table = pd.read_csv(io.StringIO("\n".join(lines)))
    assert list(table.columns) == ["cluster", "name", "size", "share", "feature", "type", "category", "rank", "mean",
                                   "median", "std", "cluster_share", "overall_share", "difference"]
    assert len(table) == 3 * frame.shape[1]
    row = table[(table.cluster == 1) & (table.feature == "alcohol")].iloc[0]
    assert row["mean"] == pytest.approx(frame["alcohol"][labels == 1].mean(), rel=1e-12)
    assert row["size"] == (labels == 1).sum()


def test_profile_of_categories_missing_values_and_left_out_rows(api):
    rows = [
        {"spend": 10.0, "segment": "gold", "age": 30.0}, {"spend": 11.0, "segment": "gold", "age": 32.0},
        {"spend": 12.0, "segment": "silver", "age": None}, {"spend": 50.0, "segment": "bronze", "age": 60.0},
        {"spend": 52.0, "segment": None, "age": 61.0}, {"spend": 51.0, "segment": "bronze", "age": 64.0},
        {"spend": None, "segment": "gold", "age": 40.0},
    ]
    response = api.post("/kmeans/datasets", json={"data": rows})
    assert response.status_code == 201, response.text
    ds = response.json()["id"]
    model = fit(api, ds, n_clusters=2, random_state=0, features=["spend", "segment"])
    assert model["status"] == "succeeded", model
    kept = np.asarray(api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"])
    doc = api.get(f"/kmeans/models/{model['id']}/profile").json()
    assert doc["rows"] == 7 and doc["rows_left_out"] == 0
    frame = pd.DataFrame(rows)
    segment = frame["segment"].fillna("(missing)")
    overall = segment.value_counts(normalize=True)
    low = int(kept[0])
    cluster = doc["clusters"][low]
    seg = next(f for f in cluster["features"] if f["name"] == "segment")
    shares = {c["category"]: c for c in seg["categories"]}
    assert set(shares) == {"gold", "silver", "bronze", "(missing)"}
    in_cluster = segment[kept == low].value_counts(normalize=True)
    for category, entry in shares.items():
        assert entry["share"] == pytest.approx(in_cluster.get(category, 0.0))
        assert entry["overall_share"] == pytest.approx(overall[category])
        p = overall[category]
        assert entry["difference"] == pytest.approx((in_cluster.get(category, 0.0) - p) / np.sqrt(p * (1 - p)))
    best = max(seg["categories"], key=lambda c: abs(c["difference"]))
    assert seg["category"] == best["category"] and seg["difference"] == best["difference"]
    assert "age" not in {f["name"] for f in cluster["features"]}  # only the model's features
    # Statistics in the data's own units, of the values present (the fit's fill is not counted).
    spend = next(f for f in cluster["features"] if f["name"] == "spend")
    assert spend["mean"] == pytest.approx(frame["spend"][kept == low].mean())
    assert spend["std"] == pytest.approx(frame["spend"][kept == low].std())
    # drop_rows: the rows left out of the fit (label -1) are left out of the profile too.
    dropped = fit(api, ds, n_clusters=2, random_state=0, features=["spend", "segment"], missing="drop_rows")
    labels = np.asarray(api.get(f"/kmeans/models/{dropped['id']}/labels").json()["labels"])
    assert list(np.flatnonzero(labels == -1)) == [4, 6]
    doc = api.get(f"/kmeans/models/{dropped['id']}/profile").json()
    assert doc["rows"] == 5 and doc["rows_left_out"] == 2
    assert sum(c["size"] for c in doc["clusters"]) == 5
    spend = next(f for f in doc["overall"] if f["name"] == "spend")
    assert spend["mean"] == pytest.approx(frame["spend"][labels >= 0].mean())


def test_profile_of_an_unfitted_model_is_409_and_of_an_unknown_one_404(api):
    ds = dataset(api, np.arange(40.0).reshape(20, 2), ["a", "b"])
    queued = api.post("/kmeans/models", json={"dataset_id": ds, "params": {"n_clusters": 2}}).json()
    api.post(f"/kmeans/models/{queued['id']}/cancel")
    assert_problem(api.get(f"/kmeans/models/{queued['id']}/profile"), 409, "cancelled")
    assert_problem(api.get(f"/kmeans/models/{queued['id']}/profile.png"), 409, "cancelled")
    assert_problem(api.get("/kmeans/models/m_0000000000000000/profile"), 404)


def test_profile_of_an_imported_model_is_409(api, wine):
    doc = api.get(f"/kmeans/models/{wine[0]['id']}/export").json()
    imported = api.post("/kmeans/models/import", json=doc).json()
    assert_problem(api.get(f"/kmeans/models/{imported['id']}/profile"), 409, "imported")


def test_profile_heatmap(api, wine):
    model, frame, _ = wine
    response = api.get(f"/kmeans/models/{model['id']}/profile.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    text = description(response.content)
    assert f"profiles of 3 clusters, {frame.shape[1]} features" in text
    for name in frame.columns:
        assert name in text


def test_profile_heatmap_keeps_the_30_features_that_differ_most(api):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(120, 40))
    data[:60, 7] += 8.0  # the one column that tells the two halves apart
    names = [f"f{i:02d}" for i in range(40)]
    model = fit(api, dataset(api, data, names), n_clusters=2, random_state=0)
    text = description(api.get(f"/kmeans/models/{model['id']}/profile.png").content)
    assert "the top 30 of 40 features" in text
    assert "f07" in text.split("columns: ")[1]


# -- names ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def named(api) -> dict:
    """Two clusters of a small dataset with ids, x near 1 or near 10."""
    rows = [{"id": f"C{i:03d}", "x": x, "y": y} for i, (x, y) in enumerate(
        [(1, 2), (1, 4), (1, 0), (10, 2), (10, 4), (10, 0)])]
    ds = api.post("/kmeans/datasets", json={"data": rows}).json()["id"]
    model = fit(api, ds, n_clusters=2, random_state=0)
    assert model["status"] == "succeeded", model
    return model


def low_high(api, model) -> tuple[int, int]:
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    return labels[0], labels[3]


def test_names_are_merged_and_appear_in_labels_predictions_and_profiles(api, named):
    low, high = low_high(api, named)
    url = f"/kmeans/models/{named['id']}"
    response = api.patch(url, json={"cluster_names": {str(low): "small x", str(high): "big x"}})
    assert response.status_code == 200, response.text
    assert response.json()["cluster_names"] == {"0": ["small x", "big x"][low], "1": ["small x", "big x"][high]}
    # Merge patch: null removes one name, the other stays.
    response = api.patch(url, json={"cluster_names": {str(high): None}})
    assert response.json()["cluster_names"] == {str(low): "small x"}
    response = api.patch(url, json={"cluster_names": {str(high): "  big x "}})
    assert api.get(url).json()["cluster_names"] == {str(low): "small x", str(high): "big x"}

    labels = api.get(f"{url}/labels").json()
    assert labels["label_names"] == ["small x"] * 3 + ["big x"] * 3
    assert csv_lines(api.get(f"{url}/labels", headers={"Accept": CSV}))[:2] == ["id,label,label_name",
                                                                                 f"C000,{low},small x"]
    predicted = api.post(f"{url}/predictions", json={"data": [{"x": 9.5, "y": 1}, {"x": 0, "y": 1}]}).json()
    assert predicted["labels"] == [high, low] and predicted["label_names"] == ["big x", "small x"]
    lines = csv_lines(api.post(f"{url}/predictions", content=b"x,y\n9.5,1\n", headers={"Content-Type": CSV,
                                                                                       "Accept": CSV}))
    assert lines == ["label,label_name", f"{high},big x"]
    scored = api.post(f"{url}/predictions?distances=true", json={"data": [[9.5, 1]]}).json()
    assert scored["label_names"] == ["big x"] and scored["distances"] == [pytest.approx(np.hypot(0.5, 1))]
    lines = csv_lines(api.post(f"{url}/predictions?distances=true", content=b"x,y\n9.5,1\n",
                               headers={"Content-Type": CSV, "Accept": CSV}))
    assert lines[0] == "label,label_name,distance" and lines[1].startswith(f"{high},big x,")
    profile = api.get(f"{url}/profile").json()
    assert profile["clusters"][high]["name"] == "big x"
    assert profile["clusters"][high]["summary"].startswith(f'cluster {high} "big x" (50%): x +')
    assert f"{high} big x (50%)" in description(api.get(f"{url}/profile.png").content)
    text = description(api.get(f"{url}/plot.png").content)
    assert f"{low} small x (n=3)" in text and f"{high} big x (n=3)" in text


def test_bad_names_are_422_naming_them_and_change_nothing(api, named):
    url = f"/kmeans/models/{named['id']}"
    before = api.get(url).json()["cluster_names"]
    assert_problem(api.patch(url, json={"cluster_names": {"0": "fine", "2": "nope", "7": "no"}}), 422, "'2'", "'7'",
                   "0..1")
    assert_problem(api.patch(url, json={"cluster_names": {"01": "x"}}), 422, "'01'")
    assert_problem(api.patch(url, json={"cluster_names": {"-1": "x"}}), 422, "'-1'")
    assert_problem(api.patch(url, json={"cluster_names": {"0": "same", "1": "same"}}), 422, "clusters 0 and 1")
    assert_problem(api.patch(url, json={"cluster_names": {"0": "   "}}), 422, "cluster 0")
    assert_problem(api.patch(url, json={"cluster_names": {"0": "a\nb"}}), 422, "control")
    assert_problem(api.patch(url, json={"cluster_names": {"0": "x" * 201}}), 400, "cluster_names")
    assert_problem(api.patch(url, json={"names": {"0": "x"}}), 400, "names")
    assert_problem(api.patch(url, json={"cluster_names": {"0": 5}}), 400, "cluster_names")
    assert api.get(url).json()["cluster_names"] == before


def test_names_of_an_unfitted_or_unknown_model(api):
    ds = dataset(api, np.arange(40.0).reshape(20, 2), ["a", "b"])
    queued = api.post("/kmeans/models", json={"dataset_id": ds, "params": {"n_clusters": 2}}).json()
    api.post(f"/kmeans/models/{queued['id']}/cancel")
    assert_problem(api.patch(f"/kmeans/models/{queued['id']}", json={"cluster_names": {"0": "x"}}), 409)
    assert_problem(api.patch("/kmeans/models/m_0000000000000000", json={"cluster_names": {"0": "x"}}), 404)


def test_names_travel_in_exports_and_are_checked_on_import(api):
    model = fit(api, dataset(api, np.array([[0.0], [0.1], [5.0], [5.1]]), ["v"]), n_clusters=2, random_state=0)
    assert [c["name"] for c in api.get(f"/kmeans/models/{model['id']}/profile").json()["clusters"]] == [None, None]
    api.patch(f"/kmeans/models/{model['id']}", json={"cluster_names": {"1": "second"}})
    # The profile shows the names as they are now (its statistics are computed once).
    clusters = api.get(f"/kmeans/models/{model['id']}/profile").json()["clusters"]
    assert [c["name"] for c in clusters] == [None, "second"] and clusters[1]["summary"].startswith('cluster 1 "second"')
    doc = api.get(f"/kmeans/models/{model['id']}/export").json()
    assert doc["cluster_names"] == {"1": "second"}
    imported = api.post("/kmeans/models/import", json=doc)
    assert imported.status_code == 201, imported.text
    assert imported.json()["cluster_names"] == {"1": "second"}
    one = api.post(f"/kmeans/models/{imported.json()['id']}/predictions", json={"data": [[5.0], [0.0]]}).json()
    assert one["label_names"] == [None if lab == 0 else "second" for lab in one["labels"]]
    assert_problem(api.post("/kmeans/models/import", json={**doc, "cluster_names": {"2": "x"}}), 422, "'2'")


def test_names_carry_over_to_new_versions_of_an_online_model(api):
    data = np.array([[0.0, 0.0], [0.2, 0.1], [10.0, 10.0], [10.1, 9.9]])
    model = fit(api, dataset(api, data, ["a", "b"]), n_clusters=2, random_state=0, method="minibatch")
    url = f"/kmeans/models/{model['id']}"
    near_zero = api.post(f"{url}/predictions", json={"data": [[0, 0]]}).json()["labels"][0]
    api.patch(url, json={"cluster_names": {str(near_zero): "origin"}})
    pushed = api.post(f"{url}/data", json={"data": [[0.1, 0.0], [9.0, 9.0]]})
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["version"] == 2 and pushed.json()["cluster_names"] == {str(near_zero): "origin"}
    assert api.get(f"{url}/versions/2").json()["cluster_names"] == {str(near_zero): "origin"}
    predicted = api.post(f"{url}/predictions", json={"data": [[0.05, 0.0]]}).json()
    assert predicted["label_names"] == ["origin"]
    assert api.post(f"{url}/predictions?version=1", json={"data": [[0.05, 0.0]]}).json()["label_names"] == ["origin"]


def test_unnamed_models_answer_as_before(api):
    model = fit(api, dataset(api, np.array([[0.0], [0.1], [5.0], [5.1]]), ["v"]), n_clusters=2, random_state=0)
    url = f"/kmeans/models/{model['id']}"
    assert "label_names" not in api.get(f"{url}/labels").json()
    assert csv_lines(api.get(f"{url}/labels", headers={"Accept": CSV}))[0] in ("0", "1")
    assert "label_names" not in api.post(f"{url}/predictions", json={"data": [[0.0]]}).json()


# -- pictures ------------------------------------------------------------------------------


def test_model_plot_names_the_principal_components_variance(api, wine):
    model, frame, _ = wine
    text = description(api.get(f"/kmeans/models/{model['id']}/plot.png").content)
    # A standardized model is drawn in its own space: PCA of the z-scored rows (178: no sampling),
    # the textbook 36% and 19% of the wine data, where the original units' PCA is proline alone.
    explained = PCA(n_components=2, random_state=0).fit(StandardScaler().fit_transform(frame)).explained_variance_ratio_
    assert f"x: PC1 ({explained[0]:.0%} of variance of standardized features)" in text
    assert f"y: PC2 ({explained[1]:.0%} of variance of standardized features)" in text
    assert round(explained[0], 2) == 0.36
    for c, size in enumerate(model["cluster_sizes"]):
        assert f"{c} (n={size})" in text


def test_model_plot_of_an_unscaled_model_names_the_variance_of_its_own_units(api):
    data = blobs_3d()
    model = fit(api, dataset(api, data, ["a", "b", "c"]), n_clusters=3, random_state=0)
    text = description(api.get(f"/kmeans/models/{model['id']}/plot.png").content)
    explained = PCA(n_components=2, random_state=0).fit(data).explained_variance_ratio_
    assert f"x: PC1 ({explained[0]:.0%} of variance); y: PC2 ({explained[1]:.0%} of variance)" in text


def blobs_3d() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.concatenate([c + rng.normal(0, [1, 2, 0.5], (30, 3)) for c in ([0, 0, 0], [12, 0, 3], [0, 15, -4])])


def test_model_plot_draws_centers_white_edged_over_translucent_points(api):
    data = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [10.0, 10.0], [10.0, 11.0], [11.0, 10.0]])
    model = fit(api, dataset(api, data, ["a", "b"]), n_clusters=2, random_state=0)
    image = np.asarray(Image.open(io.BytesIO(api.get(f"/kmeans/models/{model['id']}/plot.png").content)))[..., :3]
    # The center markers have white edges: pure white pixels bordering saturated ones inside the axes.
    spread = image.max(axis=2).astype(int) - image.min(axis=2)
    coloured = spread > 100
    white = (image > 250).all(axis=2)
    near = coloured[1:-1, 1:-1] & (white[:-2, 1:-1] | white[2:, 1:-1] | white[1:-1, :-2] | white[1:-1, 2:])
    assert near.sum() > 20
    # Points are semi-transparent: some of their pixels are lighter than the pure cluster colour.
    assert len(np.unique(image[coloured] // 16, axis=0)) > 4


def test_sweep_plot_marks_the_rules_choice_and_the_runner_up(api):
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [30, 0], [0, 30], [30, 30]], dtype=float)
    data = np.concatenate([c + rng.normal(0, 1, (40, 2)) for c in centers])
    created = api.post("/kmeans/sweeps", json={"dataset_id": dataset(api, data, ["a", "b"]), "k_min": 2, "k_max": 6,
                                               "params": {"random_state": 0}})
    assert created.status_code == 202, created.text
    from tests.conftest import wait_until_done

    sweep = wait_until_done(api, f"/kmeans/sweeps/{created.json()['id']}", 120)
    assert sweep["status"] == "succeeded" and sweep["recommended_k"] == 4, sweep
    text = description(api.get(f"/kmeans/sweeps/{sweep['id']}/plot.png").content)
    assert f"{sweep['rule']}'s choice k=4" in text
    assert f"runner-up k={sweep['runner_up']}" in text and sweep["runner_up"] != 4


def test_profile_of_values_near_float64s_largest_is_finite_json(api):
    data = np.array([[1.7e308, 1.0], [1.6e308, 1.1], [-1.7e308, 5.0], [-1.6e308, 5.2], [0.0, 3.0], [1e307, 3.1]])
    model = fit(api, dataset(api, data, ["huge", "small"]), n_clusters=2, random_state=0, standardize=True)
    assert model["status"] == "succeeded", model
    response = api.get(f"/kmeans/models/{model['id']}/profile")
    assert response.status_code == 200, response.text
    assert "Infinity" not in response.text and "NaN" not in response.text
    doc = response.json()
    labels = np.asarray(api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"])
    for cluster in doc["clusters"]:
        small = next(f for f in cluster["features"] if f["name"] == "small")
        assert small["mean"] == pytest.approx(data[labels == cluster["cluster"], 1].mean())
        huge = next(f for f in cluster["features"] if f["name"] == "huge")
        assert huge["mean"] is None or np.isfinite(huge["mean"])
    assert api.get(f"/kmeans/models/{model['id']}/profile.png").status_code == 200
    assert api.get(f"/kmeans/models/{model['id']}/profile", headers={"Accept": CSV}).status_code == 200


def test_profile_after_the_dataset_is_deleted_is_409_naming_it(api):
    ds = dataset(api, np.array([[0.0], [0.1], [5.0], [5.1]]), ["v"])
    model = fit(api, ds, n_clusters=2, random_state=0)
    assert api.delete(f"/kmeans/datasets/{ds}").status_code == 204
    assert_problem(api.get(f"/kmeans/models/{model['id']}/profile"), 409, ds, "deleted")
    assert_problem(api.get(f"/kmeans/models/{model['id']}/profile.png"), 409, ds)
    # Names need no training rows: they still work, and show in predictions.
    assert api.patch(f"/kmeans/models/{model['id']}", json={"cluster_names": {"0": "zero"}}).status_code == 200


def test_a_patch_that_is_not_json_is_415(api, named):
    response = api.patch(f"/kmeans/models/{named['id']}", content=b"0=x", headers={"Content-Type": CSV})
    assert_problem(response, 415)
