"""What a model does to rows before it clusters them: pick columns, take weights, z-score,
L2-normalise. Plain numpy and JSON, so any process (the API's, a fit's, an importer's)
applies exactly the same transform; nothing is pickled.

A model's ``preprocessing`` record::

    {"feature_index": [0, 2], "feature_columns": ["a", "c"],
     "weight_index": 1 | null, "weight_column": "b" | null,
     "mean": [..] | null, "scale": [..] | null, "distance": "euclidean" | "cosine"}

Order of the transform: select the feature columns, z-score them with ``mean``/``scale``
(when ``standardize``), then L2-normalise each row (when ``distance`` is ``cosine``).
Centers are stored in that fitted space; they are reported in original units by undoing the
z-score (cosine centers stay on the unit sphere's scale: a direction, not a point).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from kmeans.errors import Unprocessable

DEFAULT_N_CLUSTERS = 8
# Squared distances, and the inertia (their weighted sum over rows), must stay below float64's
# largest value (1.8e308): the margin leaves room for scikit-learn's own sums and products.
SQUARED_LIMIT = 1e300


def n_clusters(params: dict[str, Any]) -> int:
    """The k a fit will make: n_clusters, else the number of explicit initial centers, else 8."""
    if "n_clusters" in params:
        return int(params["n_clusters"])
    if isinstance(params.get("init"), list):
        return len(params["init"])
    return DEFAULT_N_CLUSTERS


MISSING_LABEL = "(missing)"


def as_meant(params: dict[str, Any], sweep: bool = False) -> dict[str, Any]:
    """``params`` without the documented defaults that do not apply to them: clients generated
    from the spec send every default, and a default must never turn a valid fit into a 422 --
    ``algorithm: lloyd`` with method minibatch, ``n_clusters: 8`` beside explicit ``init`` centers
    of another count (an ``n_clusters`` other than the default still must match them) or in a
    sweep's shared params (k comes from its range)."""
    meant = dict(params)
    if sweep and meant.get("n_clusters") == DEFAULT_N_CLUSTERS:
        del meant["n_clusters"]
    if meant.get("method") == "minibatch" and meant.get("algorithm") == "lloyd":
        del meant["algorithm"]
    init = meant.get("init")
    if isinstance(init, list) and meant.get("n_clusters") == DEFAULT_N_CLUSTERS and len(init) != DEFAULT_N_CLUSTERS:
        del meant["n_clusters"]
    return meant


def plan(params: dict[str, Any], schema: list[dict[str, Any]], sweep: bool = False) -> dict[str, Any]:
    """Check the fit options against each other and the dataset's column ``schema`` (see
    kmeans.schema); returns the preprocessing record without the statistics (fill values,
    ``mean``/``scale`` come at fit time).

    Raises Unprocessable naming the option for every bad value or combination.
    """
    method = params.get("method", "kmeans")
    init = params.get("init")
    missing = params.get("missing", "mean")
    if "algorithm" in params and method == "minibatch":
        raise Unprocessable(
            "algorithm (lloyd/elkan) applies to method kmeans and bisecting, not minibatch", parameter="algorithm"
        )
    if params.get("features") is not None and params.get("columns") is not None:
        raise Unprocessable("give features or columns (its old name), not both", parameter="features")
    option = "features" if params.get("features") is not None else "columns"
    by_name = {e["name"]: e for e in schema}
    names = [e["name"] for e in schema]
    numeric = [e["name"] for e in schema if e["type"] == "numeric"]
    categorical = [e["name"] for e in schema if e["type"] == "categorical"]
    weight = params.get("weight_column")
    if params.get(option) is not None:
        unknown = [c for c in params[option] if c not in by_name]
        if unknown:
            raise Unprocessable(
                f"{option}: the dataset has no column {unknown[0]!r} (it has {', '.join(names)})", parameter=option
            )
        ids = [c for c in params[option] if by_name[c]["type"] == "id"]
        if ids:
            raise Unprocessable(f"{option}: {ids[0]!r} is the dataset's id column, not a feature", parameter=option)
        features = list(params[option])
    else:
        features = [e["name"] for e in schema if e["type"] != "id" and e["name"] != weight]
    if weight is not None:
        if weight not in by_name:
            raise Unprocessable(
                f"weight_column: the dataset has no column {weight!r} (it has {', '.join(names)})",
                parameter="weight_column",
            )
        if weight in features:
            raise Unprocessable(
                f"weight_column {weight!r} cannot also be a feature; leave it out of {option}",
                parameter="weight_column",
            )
        if by_name[weight]["type"] != "numeric" or by_name[weight]["missing"]:
            raise Unprocessable(
                f"weight_column {weight!r} must be a numeric column with no missing value", parameter="weight_column"
            )
    if not features:
        raise Unprocessable("no feature column is left to cluster on", parameter=option)
    if missing == "error":
        gappy = [n for n in features if by_name[n].get("missing")]
        if gappy:
            raise Unprocessable(
                f"column {gappy[0]!r} has {by_name[gappy[0]]['missing']} missing values, and missing is 'error';"
                " choose missing mean, median or drop_rows, or leave the column out of features",
                parameter="missing",
            )
    entries: list[dict[str, Any]] = []
    # The encoded space: numeric features first, then each categorical one's one-hot block
    # (as dataset_design and encode build it).
    encoded: list[str] = [n for n in features if by_name[n]["type"] == "numeric"]
    for name in features:
        column = by_name[name]
        if column["type"] == "numeric":
            entries.append({"name": name, "type": "numeric", "index": numeric.index(name), "fill": None})
        else:
            categories = list(column["categories"])
            with_missing = bool(column["missing"]) and missing not in ("drop_rows", "error")
            entries.append({
                "name": name, "type": "categorical", "index": categorical.index(name),
                "categories": categories, "missing_category": with_missing,
            })
            encoded += [f"{name}={c}" for c in categories] + ([f"{name}={MISSING_LABEL}"] if with_missing else [])
    width = len(encoded)
    if isinstance(init, list):
        if sweep:
            raise Unprocessable("a sweep fits several k, so init cannot be explicit centers", parameter="init")
        if method == "bisecting":
            raise Unprocessable(
                "method bisecting takes init k-means++ or random, not explicit centers", parameter="init"
            )
        k = params.get("n_clusters", len(init))
        if len(init) != k or any(len(row) != width for row in init):
            widths = {len(row) for row in init}
            raise Unprocessable(
                f"init must be {k} x {width} (n_clusters x feature columns, categories one-hot) but is"
                f" {len(init)} x {'/'.join(map(str, sorted(widths)))}",
                parameter="init",
            )
        if not np.isfinite(np.asarray(init, dtype=np.float64)).all():
            raise Unprocessable("init centers must be finite numbers (no NaN or infinity)", parameter="init")
        if params.get("n_init", 1) != 1:
            raise Unprocessable("with explicit init centers n_init must be 1 (or left out)", parameter="n_init")
    if sweep:
        for name in ("n_clusters", "contamination"):
            if name in params:
                raise Unprocessable(f"{name} is not a sweep option (k comes from k_min..k_max)", parameter=name)
    all_numeric = all(e["type"] == "numeric" for e in entries)
    return {
        "features": entries,
        "feature_columns": features,
        "feature_index": [e["index"] for e in entries] if all_numeric else None,
        "encoded_columns": encoded,
        "weight_column": weight,
        "weight_index": numeric.index(weight) if weight is not None else None,
        "missing": missing,
        "mean": None,
        "scale": None,
        "distance": params.get("distance", "euclidean"),
        "id_column": next((e["name"] for e in schema if e["type"] == "id"), None),
    }


def features_of(pre: dict[str, Any]) -> list[dict[str, Any]]:
    """A model's features; a model made before column types has numeric ones only, never missing."""
    if pre.get("features") is not None:
        return pre["features"]
    return [
        {"name": n, "type": "numeric", "index": i, "fill": None}
        for n, i in zip(pre["feature_columns"], pre.get("feature_index") or range(len(pre["feature_columns"])),
                        strict=True)
    ]


def encoded_columns(pre: dict[str, Any]) -> list[str]:
    """The names of the fitted space's columns: numeric features, then ``name=category`` one-hots."""
    return pre.get("encoded_columns") or list(pre["feature_columns"])


def _one_hot(codes: np.ndarray, feature: dict[str, Any]) -> np.ndarray:
    """Codes into a feature's categories (-1: missing, -2: unknown) as its one-hot block."""
    width = len(feature["categories"]) + bool(feature.get("missing_category"))
    block = np.zeros((len(codes), width))
    hot = codes.copy()
    if feature.get("missing_category"):
        hot[codes == -1] = width - 1
    rows = np.flatnonzero(hot >= 0)
    block[rows, hot[rows]] = 1.0
    return block


def _missing_problem(feature: dict[str, Any], row: int, strategy: str, where: str) -> Unprocessable:
    return Unprocessable(
        f"row {row}, column {feature['name']!r}: the value is missing, and the model's missing is"
        f" {strategy!r}{where}",
        row=row,
        parameter=feature["name"],
    )


# Rows of the design matrix built at a time: the selected values, their fills and one-hot
# blocks of one chunk stay in cache, and no full-size temporary is made.
DESIGN_CHUNK_ROWS = 65536
# Design matrices dataset_design made (by id), which transform may scale in place: nobody else
# holds them (a fit's matrix is as large as the dataset; a copy of it was the fit's largest cost).
_SCRATCH: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def dataset_design(
    values: np.ndarray, codes: np.ndarray | None, pre: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None]:
    """Dataset rows -> the encoded feature matrix (missing values filled as ``pre['missing']``
    says, categories one-hot), ``pre`` with its fill values, and the rows kept (None: all;
    ``drop_rows`` leaves out rows with a missing feature).

    The matrix is made once, a chunk of rows at a time, from the (memory-mapped) dataset; it is
    the caller's own: ``transform`` of it scales it in place."""
    features = features_of(pre)
    strategy = pre.get("missing", "mean")
    numeric = [f for f in features if f["type"] == "numeric"]
    index = [f["index"] for f in numeric]
    n = len(values)
    whole = index == list(range(values.shape[1]))  # every numeric column, in order: no selection
    # (Not np.isnan(..., out=gaps[:, j]): numpy 2.4 writes wrong values to a strided boolean out.)
    gaps = np.isnan(values) if whole else np.zeros((n, 0), dtype=bool)
    if not whole and index:
        gaps = np.column_stack([np.isnan(values[:, i]) for i in index])
    kept = None
    cat_codes = {f["name"]: np.asarray(codes[:, f["index"]]) for f in features if f["type"] == "categorical"}
    cat_gaps = {name: c < 0 for name, c in cat_codes.items()}
    any_gap = gaps.any(axis=1) if gaps.size else np.zeros(n, dtype=bool)
    for gap in cat_gaps.values():
        any_gap = any_gap | gap
    rows = None  # the dataset rows of the matrix's rows (None: all, in order)
    if any_gap.any():
        if strategy == "error":
            row = int(np.flatnonzero(any_gap)[0])
            feature = next(
                f for f in features
                if (gaps[row, numeric.index(f)] if f["type"] == "numeric" else cat_gaps[f["name"]][row])
            )
            raise Unprocessable(
                f"column {feature['name']!r} has missing values (the first in data row {row + 1}), and missing is"
                " 'error'; choose missing mean, median or drop_rows",
                parameter="missing",
            )
        if strategy == "drop_rows":
            kept = ~any_gap
            if not kept.any():
                raise Unprocessable("every row has a missing value, so drop_rows leaves none", parameter="missing")
            rows = np.flatnonzero(kept)
            cat_codes = {name: c[kept] for name, c in cat_codes.items()}
            gaps = gaps[kept]
    fills: list[float | None] = []
    filled = []
    for j, feature in enumerate(numeric):
        fill = None
        if strategy in ("mean", "median"):
            column = np.asarray(values[:, index[j]], dtype=np.float64)
            if rows is not None:
                column = column[rows]
            present = column[~gaps[:, j]] if gaps[:, j].any() else column
            fill = finite_median(present) if strategy == "median" else finite_mean(present)
        fills.append(fill if fill is not None and gaps[:, j].any() else None)
        filled.append({**feature, "fill": fill})
    by_name = {f["name"]: f for f in filled}
    pre = {**pre, "features": [by_name.get(f["name"], f) for f in features]}
    categorical = [f for f in features if f["type"] == "categorical"]
    if not categorical:  # numbers only: the selected columns themselves (the memory map when they are all)
        block = np.asarray(values, dtype=np.float64) if whole else np.array(values[:, index], dtype=np.float64)
        if kept is not None:
            block = block[kept]
        for j, fill in enumerate(fills):
            if fill is not None:
                if np.shares_memory(block, values):
                    block = np.array(block)
                block[gaps[:, j], j] = fill
        return block, pre, kept
    widths = [len(f["categories"]) + bool(f.get("missing_category")) for f in categorical]
    width = len(numeric) + sum(widths)
    total = n if rows is None else len(rows)
    design = np.empty((total, width))
    for start in range(0, total, DESIGN_CHUNK_ROWS):
        stop = min(start + DESIGN_CHUNK_ROWS, total)
        out = design[start:stop]
        if numeric:
            source = values[start:stop] if rows is None else values[rows[start:stop]]
            out[:, : len(numeric)] = source if whole else np.asarray(source)[:, index]
            for j, fill in enumerate(fills):
                if fill is not None:
                    column = out[:, j]
                    column[gaps[start:stop, j]] = fill
        column = len(numeric)
        for feature, block_width in zip(categorical, widths, strict=True):
            hot = cat_codes[feature["name"]][start:stop]
            if feature.get("missing_category"):
                hot = np.where(hot == -1, block_width - 1, hot)
            # 1.0 where the code is the column's category; all zeros for -1/-2 (missing, unknown).
            np.equal(hot[:, None], np.arange(block_width), out=out[:, column : column + block_width], casting="unsafe")
            column += block_width
    _SCRATCH[id(design)] = design
    return design, pre, kept


def finite_mean(values: np.ndarray) -> float:
    """The mean of finite values, finite even when their sum passes float64's range (1.7e308 + 1.7e308)."""
    with np.errstate(over="ignore"):
        mean = float(values.mean())
    if np.isfinite(mean):
        return mean
    top = float(np.max(np.abs(values)))
    return float((values / top).mean() * top)


def finite_median(values: np.ndarray) -> float:
    """The median of finite values, finite even when the two middle ones sum past float64's range."""
    with np.errstate(over="ignore"):
        median = float(np.median(values))
    if np.isfinite(median):
        return median
    low, high = np.quantile(values, 0.5, method="lower"), np.quantile(values, 0.5, method="higher")
    return float(low / 2 + high / 2)


def finite_std(values: np.ndarray, ddof: int = 0) -> float:
    """The standard deviation of finite values, computed on a scaled copy when it would overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(values.std(ddof=ddof))
    if np.isfinite(std):
        return std
    top = float(np.max(np.abs(values)))
    return float((values / top).std(ddof=ddof) * top)


def expect(pre: dict[str, Any]) -> Any:
    """What a reader of prediction rows for a model with ``pre`` should expect (csvio.Expect):
    its features then its id column, its categorical features and id kept as text, and the
    categories a data row may hold."""
    from kmeans.csvio import Expect

    features = features_of(pre)
    id_column = pre.get("id_column")
    text = {f["name"] for f in features if f["type"] == "categorical"} | ({id_column} if id_column else set())
    known = {c for f in features if f["type"] == "categorical" for c in f["categories"]}
    names = tuple(f["name"] for f in features) + ((id_column,) if id_column else ())
    return Expect(names=names, text=frozenset(text), known=frozenset(known))


def encode(table: Any, pre: dict[str, Any], model_id: str = "") -> tuple[np.ndarray, dict[str, int]]:
    """Prediction rows (a csvio.Table) -> the encoded feature matrix, matched to the model's
    features by column name when the rows have names, by position otherwise; and how many
    values of each categorical feature were categories the model has not seen."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from kmeans.csvio import _as_text, text_array

    features = features_of(pre)
    names = [f["name"] for f in features]
    if table.named and any(n not in table.columns for n in names):
        absent = [n for n in names if n not in table.columns]
        from kmeans.csvio import default_columns

        if names == default_columns(len(names)) and table.n_features == len(names) and not table.keyed:
            # A model of a file without a header (columns x1, x2, …) has no names to match:
            # a file with a header gives its columns by position, as before names mattered.
            sources = list(table.columns)
        else:
            raise Unprocessable(
                f"the points have no column {absent[0]!r}; model {model_id} takes {', '.join(names)}"
                " (matched by name when the points have a header)",
                parameter=absent[0],
            )
    elif table.named:
        sources = names
    else:
        if table.n_features != len(names):
            raise Unprocessable(
                f"the points have {table.n_features} columns but model {model_id} was fitted on"
                f" {len(names)} ({', '.join(names)})"
            )
        sources = list(table.columns)
    numeric_names = table.numeric_columns
    n = table.rows
    numeric = [(f, s) for f, s in zip(features, sources, strict=True) if f["type"] == "numeric"]
    indices = [numeric_names.index(s) if s in numeric_names else None for _, s in numeric]
    if indices and None not in indices:
        whole = table.values
        block = whole if indices == list(range(whole.shape[1])) else np.ascontiguousarray(whole[:, indices])
    else:
        block = np.empty((n, len(numeric)))
        for j, (feature, source) in enumerate(numeric):
            if indices[j] is None:
                cells = table.text[source]
                bad = int(np.flatnonzero(cells.is_valid().to_numpy(zero_copy_only=False))[0])
                position = table.columns.index(source) + 1
                row = bad + table.first_row
                raise Unprocessable(
                    f"row {row}, column {position}: {str(cells[bad].as_py())[:40]!r} is not a number"
                    f" (column {feature['name']!r} of model {model_id} is numeric)",
                    row=row,
                    column=position,
                )
            block[:, j] = table.numeric_column(source)
    gaps = np.isnan(block)
    if gaps.any():
        block = np.array(block)
        for j, (feature, _) in enumerate(numeric):
            if not gaps[:, j].any():
                continue
            if feature.get("fill") is None:
                row = int(np.flatnonzero(gaps[:, j])[0]) + table.first_row
                strategy = pre.get("missing", "error")
                raise _missing_problem(feature, row, strategy, " (predictions of it take complete rows)")
            block[gaps[:, j], j] = feature["fill"]
    unknown: dict[str, int] = {}
    parts = [block]
    for feature, source in zip(features, sources, strict=True):
        if feature["type"] != "categorical":
            continue
        if source in table.text:
            cells = table.text[source]
        else:
            cells = text_array([None if v != v else _as_text(v) for v in table.numeric_column(source).tolist()])
        found = pc.index_in(cells, value_set=pa.array(feature["categories"], type=cells.type))
        codes = found.fill_null(-2).to_numpy(zero_copy_only=False).astype(np.int64)
        codes[cells.is_null().to_numpy(zero_copy_only=False)] = -1
        if not feature.get("missing_category") and (codes == -1).any():
            strategy = pre.get("missing", "mean")
            if strategy in ("error", "drop_rows"):
                row = int(np.flatnonzero(codes == -1)[0]) + table.first_row
                raise _missing_problem(feature, row, strategy, " (predictions of it take complete rows)")
            codes[codes == -1] = -2  # never seen missing in training: like an unknown category
        if (codes == -2).any():
            unknown[feature["name"]] = int((codes == -2).sum())
        parts.append(_one_hot(codes, feature))
    design = parts[0] if len(parts) == 1 else np.hstack(parts)
    return design, unknown


def points_space(
    table: Any, pre: dict[str, Any] | None, centers: np.ndarray, model_id: str, columns: list[str]
) -> tuple[np.ndarray, dict[str, int]]:
    """Prediction rows (a csvio.Table) -> the rows in the model's fitted space, checked (422 naming
    the row and column), and the unknown categories per column: the one preparation of
    predictions, scored predictions and batch scorings."""
    encoded, unknown = encode(table, pre, model_id)
    space = encoded if is_identity(pre) else transform(encoded, pre)
    check_points(space, centers, pre or {"feature_columns": columns}, table.first_row)
    return space, unknown


def ids_of(table: Any, pre: dict[str, Any]) -> list[str] | None:
    """The values of the model's id column in prediction rows, when they have it."""
    from kmeans.csvio import _as_text

    name = pre.get("id_column")
    if not name or not table.named or name not in table.columns:
        return None
    if name in table.text:
        return table.text[name].fill_null("").to_pylist()
    return ["" if v != v else _as_text(v) for v in table.numeric_column(name).tolist()]


def weights(values: np.ndarray, pre: dict[str, Any]) -> np.ndarray | None:
    """The sample weights of ``values`` (dataset rows), checked: finite and not negative."""
    if pre.get("weight_index") is None:
        return None
    column = np.asarray(values[:, pre["weight_index"]], dtype=np.float64)
    negative = np.flatnonzero(column < 0)
    if len(negative):
        raise Unprocessable(
            f"weight_column {pre['weight_column']!r} has a negative weight ({column[negative[0]]:g})"
            f" in row {int(negative[0]) + 1}; weights must be >= 0",
            parameter="weight_column",
        )
    with np.errstate(over="ignore"):
        total = column.sum()
    if not total > 0:
        raise Unprocessable(f"weight_column {pre['weight_column']!r} has no positive weight", parameter="weight_column")
    if not np.isfinite(total):
        raise Unprocessable(
            f"weight_column {pre['weight_column']!r} sums past float64's range; rescale the weights",
            parameter="weight_column",
        )
    return column


def fit_scaler(features: np.ndarray, pre: dict[str, Any], standardize: bool) -> dict[str, Any]:
    """``pre`` with ``mean``/``scale`` of ``features`` when standardizing (scale 1 for constant columns)."""
    if not standardize:
        return pre
    n_numeric = sum(f["type"] == "numeric" for f in features_of(pre))
    # Category shares stay shares (mean 0, scale 1): only the numeric columns are measured, in
    # the matrix's own memory order (row-major ones as one contiguous block: numpy sums each
    # column in row order either way, the same figures, but over a strided view twice as slowly).
    numbers = features[:, :n_numeric]
    if features.flags.c_contiguous and n_numeric < features.shape[1]:
        numbers = np.ascontiguousarray(numbers)
    mean = np.zeros(features.shape[1])
    scale = np.ones(features.shape[1])
    if n_numeric:
        with np.errstate(over="ignore", invalid="ignore"):
            mean[:n_numeric] = numbers.mean(axis=0)
            scale[:n_numeric] = numbers.std(axis=0)
        for j in np.flatnonzero(~np.isfinite(mean[:n_numeric]) | ~np.isfinite(scale[:n_numeric])):
            # Sums past float64's range (values near 1e308): the column's own overflow-safe figures.
            mean[j], scale[j] = finite_mean(numbers[:, j]), finite_std(numbers[:, j])
    scale[scale == 0] = 1.0
    return {**pre, "mean": mean.tolist(), "scale": scale.tolist()}


def transform(features: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """Feature rows in original units -> the space the model was fitted in (a matrix that
    dataset_design made is scaled in place)."""
    if _SCRATCH.get(id(features)) is features:
        del _SCRATCH[id(features)]
        return _transform_in_place(features, pre)
    out = np.asarray(features, dtype=np.float64)
    if pre.get("mean") is not None:
        source, mean, scale = out, np.asarray(pre["mean"]), np.asarray(pre["scale"])
        with np.errstate(over="ignore"):
            out = (source - mean) / scale
        for j in _huge(mean):
            out[:, j] = source[:, j] / scale[j] - mean[j] / scale[j]
    if pre.get("distance") == "cosine":
        norms = row_norms(out)
        out = out / np.where(norms == 0, 1.0, norms)  # an all-zero row stays zero
    return np.ascontiguousarray(out)


def _transform_in_place(out: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """transform's arithmetic, the same figures, in ``out`` itself, a chunk of rows at a time;
    columns with mean 0 and scale 1 (one-hot ones) are left as they are: x - 0 / 1 is x."""
    mean = scale = None
    if pre.get("mean") is not None:
        mean, scale = np.asarray(pre["mean"], dtype=np.float64), np.asarray(pre["scale"], dtype=np.float64)
        moved = np.flatnonzero((mean != 0) | (scale != 1))
        last = int(moved[-1]) + 1 if len(moved) else 0
        mean, scale = mean[:last], scale[:last]  # the columns up to the last one that changes
    huge = _huge(mean) if mean is not None else []
    shifts = {int(j): (scale[j], mean[j] / scale[j]) for j in huge}
    if len(huge):
        mean, scale = mean.copy(), scale.copy()
        mean[huge], scale[huge] = 0.0, 1.0  # those columns are scaled on their own, below
    cosine = pre.get("distance") == "cosine"
    for start in range(0, len(out), DESIGN_CHUNK_ROWS):
        chunk = out[start : start + DESIGN_CHUNK_ROWS]
        if mean is not None and len(mean):
            part = chunk[:, : len(mean)]
            part -= mean
            part /= scale
            for j, (divisor, shift) in shifts.items():
                column = part[:, j]
                column /= divisor
                column -= shift
        if cosine:
            norms = row_norms(chunk)
            chunk /= np.where(norms == 0, 1.0, norms)
    return out


# A mean this large (values near float64's largest) is subtracted after scaling, (x / s) - (m / s):
# x - m itself could overflow. Below it, (x - m) / s, the usual figures.
HUGE_MEAN = 1e300


def _huge(mean: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.abs(mean) >= HUGE_MEAN)


def row_norms(rows: np.ndarray) -> np.ndarray:
    """The L2 norm of each row (a column vector), finite for rows of values up to float64's
    largest: a row whose squares overflow is measured scaled by its largest value."""
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
    wide = np.flatnonzero(~np.isfinite(norms[:, 0]))
    if len(wide):
        top = np.max(np.abs(rows[wide]), axis=1, keepdims=True)
        norms[wide] = top * np.linalg.norm(rows[wide] / top, axis=1, keepdims=True)
    return norms


def magnitudes(matrix: np.ndarray) -> np.ndarray:
    """Per column the largest absolute value (missing values ignored, 0 for a column of none),
    without a temporary copy of the matrix."""
    if not len(matrix):
        return np.zeros(matrix.shape[1])
    top = np.fmax(np.fmax.reduce(matrix, axis=0), -np.fmin.reduce(matrix, axis=0))
    return np.nan_to_num(np.asarray(top, dtype=np.float64), nan=0.0, posinf=np.inf)


def overflowing(tops: np.ndarray, mass: float) -> int | None:
    """The column whose values (``tops``: per column the largest absolute value) make the squared
    distances between rows and centers in their range, summed over ``mass`` (the rows, or their
    total weight), overflow float64; None when none does."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum((2.0 * tops) ** 2)) * mass
    if np.isfinite(tops).all() and np.isfinite(total) and total <= SQUARED_LIMIT:
        return None
    return int(np.argmax(tops))


def too_large(name: str, top: float, rows: float, fitted: bool) -> Unprocessable:
    """The 422 for a feature whose values are too large for squared distances in float64."""
    value = f"values as large as {top:.3g}" if np.isfinite(top) else "values too large for float64 arithmetic"
    where, advice = (" (in the fitted space)", "") if fitted else ("", " or fit with standardize: true")
    return Unprocessable(
        f"column {name!r} has {value}{where}: the squared distances of {rows:g} rows to their centers would"
        f" overflow float64; rescale the column (divide it by a power of ten){advice}",
        parameter=name,
    )


def check_fit_space(space: np.ndarray, pre: dict[str, Any], weights: np.ndarray | None) -> None:
    """Refuse (422 naming the column) a fitted space whose squared distances would overflow float64."""
    tops = magnitudes(space)
    mass = float(weights.sum()) if weights is not None else float(len(space))
    column = overflowing(tops, mass)
    if column is not None:
        raise too_large(encoded_columns(pre)[column], float(tops[column]), mass, pre.get("mean") is not None)


def check_points(space: np.ndarray, centers: np.ndarray, pre: dict[str, Any], first_row: int) -> None:
    """Refuse (422 naming the row and column) points in the fitted space whose squared distance
    to a center would overflow float64 (so their label or distance would be meaningless)."""
    if not space.size:
        return
    reach = magnitudes(centers)
    with np.errstate(over="ignore", invalid="ignore"):
        top = np.maximum(np.max(space), -np.min(space))
        bound = space.shape[1] * (top + reach.max(initial=0.0)) ** 2
        if np.isfinite(bound) and bound <= SQUARED_LIMIT:
            return  # every row at once: the usual case, two passes over the rows
        per_row = ((np.abs(space) + reach) ** 2).sum(axis=1)
    row = int(np.flatnonzero(~(per_row <= SQUARED_LIMIT))[0])
    column = int(np.argmax(np.abs(space[row])))
    name = encoded_columns(pre)[column]
    where = " (in the fitted space)" if pre.get("mean") is not None else ""
    raise Unprocessable(
        f"row {row + first_row}, column {name!r}: {space[row, column]:.3g}{where} is too large: its squared"
        " distance to the model's centers would overflow float64",
        row=row + first_row,
        parameter=name,
    )


def to_original(centers: np.ndarray, pre: dict[str, Any] | None) -> np.ndarray:
    """Centers in the fitted space -> original units (undoes the z-score)."""
    if pre is None or pre.get("mean") is None:
        return centers
    return centers * np.asarray(pre["scale"]) + np.asarray(pre["mean"])


def is_identity(pre: dict[str, Any] | None) -> bool:
    return pre is None or (pre.get("mean") is None and pre.get("distance", "euclidean") == "euclidean")
