"""``kmeans``: the service from a terminal.

    kmeans datasets upload points.csv --name points
    kmeans models fit ds_… --k 3 --param random_state=0 --wait
    kmeans predict m_… new-points.csv

Tables for people, ``--json`` for scripts (plain JSON on stdout). Exit codes: 0 ok, 1 the
server answered with an error (its detail on stderr), 2 a usage error, 3 the server cannot be
reached, 4 the server refused the token: none, unknown, revoked or expired (401), or its role
may not do this (403).

The token comes from ``--token`` or, better (it stays out of shell history and process
lists), the ``KMEANS_TOKEN`` environment variable; it is never printed. A person signs in
instead with ``kmeans login`` (name and password): the refresh token is kept, per server URL,
in ``sessions.json`` of the config dir (``$KMEANS_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/kmeans``
or ``~/.config/kmeans``), readable by its owner only (0600), and every later command refreshes
its access token from it; ``kmeans logout`` ends the sign-in. ``--project`` (``KMEANS_PROJECT``)
chooses which of a user's projects commands act in.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from kmeans import __version__, config
from kmeans.client import ACTIVE, ApiError, CannotConnect, Forbidden, InvalidToken, KMeansClient, Unauthorized

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_API_ERROR, EXIT_USAGE, EXIT_CONNECT, EXIT_AUTH = 1, 2, 3, 4

# Piped output is not cut at 80 columns (ids stay whole); a terminal uses its own width.
out = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
err = Console(stderr=True, highlight=False)


def config_dir() -> Path:
    """Where ``kmeans login`` keeps its sign-ins."""
    if os.environ.get("KMEANS_CONFIG_DIR"):
        return Path(os.environ["KMEANS_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "kmeans"


class Sessions:
    """The sign-ins of ``kmeans login``, one per server URL, in a file only its owner may read."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or config_dir()
        self.path = self.dir / "sessions.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """All sign-ins, under an exclusive lock (a refresh token works once: two commands must not
        both refresh it), written back when the block ends."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "sessions.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                sessions = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                sessions = {}  # a damaged file holds nothing usable: sign in again
            before = json.dumps(sessions, sort_keys=True)
            yield sessions
            if json.dumps(sessions, sort_keys=True) != before:
                self._write(sessions)

    def _write(self, sessions: dict[str, Any]) -> None:
        # Made 0600 before anything is written to it, and replaced whole (never half-written).
        temp = self.path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump(sessions, handle, indent=2)
        os.replace(temp, self.path)


class State:
    """What every command needs: the client, and whether to print JSON."""

    def __init__(
        self,
        url: str,
        timeout: float,
        as_json: bool,
        http: Any = None,
        token: str | None = None,
        project: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.as_json = as_json
        self._client: KMeansClient | None = None
        self._timeout = timeout
        self._http = http
        self._token = token
        self.project = project
        self.sessions = Sessions()
        self.signed_in_as: str | None = None

    def __repr__(self) -> str:
        return f"State(url={self.url!r}, as_json={self.as_json})"

    def new_client(self, **kwargs: Any) -> KMeansClient:
        """A client of this server (with this command's timeout, HTTP transport and project)."""
        return KMeansClient(self.url, timeout=self._timeout, http=self._http, project=self.project, **kwargs)

    def save_grant(self, grant: dict[str, Any], username: str | None = None) -> None:
        """Keep a sign-in's newest tokens for the next commands."""
        with self.sessions.locked() as sessions:
            kept = sessions.get(self.url, {})
            sessions[self.url] = {
                "username": username or kept.get("username"),
                "refresh_token": grant["refresh_token"],
                "access_token": grant["access_token"],
                "access_expires_at": grant["access_expires_at"],
            }

    @property
    def client(self) -> KMeansClient:
        """The client, made on first use: the token of --token or KMEANS_TOKEN, else the sign-in of
        ``kmeans login`` for this URL (refreshed now, under the lock, if its access token expired)."""
        if self._client is None:
            if not self._token:
                with self.sessions.locked() as sessions:
                    kept = sessions.get(self.url)
                    if kept:
                        self.signed_in_as = kept.get("username")
                        fresh = time.time() < kept.get("access_expires_at", 0)
                        client = self.new_client(
                            token=kept["access_token"] if fresh else "",
                            refresh_token=kept["refresh_token"],
                            access_expires_at=kept.get("access_expires_at") if fresh else None,
                        )
                        if not fresh:  # refreshed here, under the lock (save_grant would wait for it)
                            try:
                                grant = client.refresh()
                            except Unauthorized:
                                del sessions[self.url]  # revoked or expired: of no more use
                                raise
                            sessions[self.url] = {**kept, "refresh_token": grant["refresh_token"],
                                                  "access_token": grant["access_token"],
                                                  "access_expires_at": grant["access_expires_at"]}
                        client.on_refresh = self.save_grant  # a long command's later refreshes
                        self._client = client
            if self._client is None:
                self._client = self.new_client(token=self._token)
        return self._client


class KMeansGroup(click.Group):
    """Turns the client's errors into messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CannotConnect as exc:
            err.print(f"error: cannot connect to {exc.url} ({exc.reason or type(exc.reason).__name__});"
                      " is the server running? (set --url or KMEANS_URL)", markup=False)
            ctx.exit(EXIT_CONNECT)
        except Unauthorized as exc:
            state = ctx.obj if isinstance(ctx.obj, State) else None
            sent = state is not None and state._client is not None and state._client.has_token
            hint = ("the token was refused" if sent else "no token was given") + "; pass --token or set KMEANS_TOKEN"
            if state is not None and state.signed_in_as:
                hint = f"the sign-in of {state.signed_in_as} was refused; sign in again with `kmeans login`"
            err.print(f"error 401: {exc.detail} ({hint})", markup=False)
            ctx.exit(EXIT_AUTH)
        except Forbidden as exc:
            err.print(f"error 403: {exc.detail} (see `kmeans whoami` for the token's role and project)", markup=False)
            ctx.exit(EXIT_AUTH)
        except ApiError as exc:
            err.print(f"error {exc.status}: {exc.detail}", markup=False)
            ctx.exit(EXIT_API_ERROR)
        except InvalidToken as exc:
            err.print(f"error: --token / KMEANS_TOKEN: {exc}", markup=False)
            ctx.exit(EXIT_USAGE)
        except TimeoutError as exc:
            err.print(f"error: {exc}", markup=False)
            ctx.exit(EXIT_API_ERROR)


JOB_STATUSES = ["queued", "running", "paused", "succeeded", "failed", "cancelled"]


def json_option(func: Callable) -> Callable:
    """``--json`` on a command (``kmeans --json …`` works too)."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
    @click.pass_obj
    @wraps(func)
    def wrapper(state: State, *args: Any, as_json: bool, **kwargs: Any) -> Any:
        state.as_json = state.as_json or as_json
        return func(state, *args, **kwargs)

    return wrapper


def emit(state: State, data: Any, human: Callable[[Any], None]) -> None:
    if state.as_json:
        click.echo(json.dumps(data, indent=None if isinstance(data, list) else 2))
    else:
        human(data)


def table(rows: Iterable[Iterable[Any]], *columns: str, title: str | None = None) -> None:
    grid = Table(*columns, header_style="bold")
    for row in rows:
        grid.add_row(*("" if v is None else str(v) for v in row))
    if title:
        out.print(title, style="bold")
    out.print(grid)


def fields(record: dict[str, Any], title: str | None = None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in record.items():
        if value is None or value == "":
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(", ", ": "))
        grid.add_row(key, str(value))
    if title:
        out.print(title, style="bold")
    out.print(grid)


def lines(values: Iterable[Any]) -> None:
    click.echo("\n".join(str(v) for v in values))


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value``; the value as JSON when it is (10, 1e-4, null, true), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="'--param'")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def parse_duration(text: str) -> int:
    """``3600``, ``90m``, ``12h`` or ``30d`` as seconds."""
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# -- the command tree ----------------------------------------------------------------------


@click.group(cls=KMeansGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="KMEANS_URL", default=DEFAULT_URL, show_default=True,
              help="The server's root URL (or set KMEANS_URL).")
@click.option("--token", envvar="KMEANS_TOKEN", metavar="TOKEN", show_default=False, show_envvar=True,
              help="Bearer token to send (better: set KMEANS_TOKEN, which keeps it out of shell history).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait for each HTTP request.")
@click.option("--project", "scope", envvar="KMEANS_PROJECT", metavar="PROJECT", show_envvar=True,
              help="Which of a signed-in user's projects to act in (sent as X-Kmeans-Project).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables.")
@click.version_option(__version__, prog_name="kmeans")
@click.pass_context
def cli(ctx: click.Context, url: str, token: str | None, timeout: float, as_json: bool, scope: str | None) -> None:
    """Cluster numeric data with a kmeans-service server: upload datasets, fit k-means models,
    look at them, and label new points.

    Exit codes: 0 ok, 1 the server said no (its reason on stderr), 2 usage error, 3 the server
    cannot be reached, 4 the token was refused (401: none, unknown, revoked or expired) or its
    role may not do this (403).
    """
    http = ctx.obj.get("http") if isinstance(ctx.obj, dict) else None  # tests pass an in-process client
    # "" (e.g. KMEANS_TOKEN= or --token "") means no token, not "read KMEANS_TOKEN again".
    ctx.obj = State(url, timeout, as_json, http, token or "", scope or None)
    ctx.call_on_close(lambda: ctx.obj._client and ctx.obj._client.close())


@cli.command()
@json_option
def ping(state: State) -> None:
    """Check that the server is up."""
    emit(state, state.client.ping(), lambda r: out.print(f"{state.url}: {r['status']} (version {r['version']})"))


# -- datasets --------------------------------------------------------------------------------


@cli.group()
def datasets() -> None:
    """Numeric tables to cluster."""


DATASET_COLUMNS = ("id", "name", "rows", "n_features", "created_at")


def csv_options(func: Callable) -> Callable:
    """The options that say how to read a CSV file."""
    func = click.option("--na-values", metavar="A,B,…",
                        help="Cell values that mean missing (default: empty, NA, N/A, NaN, null, None).")(func)
    func = click.option("--decimal", type=click.Choice([".", ","]), help="The decimal mark (default: .).")(func)
    return click.option("--delimiter", type=click.Choice([",", ";", "tab", "|"]),
                        help="The column separator (default: detected).")(func)


def _csv_kwargs(delimiter: str | None, decimal: str | None, na_values: str | None) -> dict[str, Any]:
    return {
        "delimiter": "\t" if delimiter == "tab" else delimiter,
        "decimal": decimal,
        "na_values": na_values.split(",") if na_values is not None else None,
    }


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--name", help="A label for the dataset (default: the file's name).")
@click.option("--project", help="The project to put it in (default: the token's own).")
@click.option("--id-column", help="The column of row ids: kept and echoed, never clustered on (default: detected).")
@csv_options
@json_option
def datasets_upload(
    state: State, file: Path, name: str | None, project: str | None, id_column: str | None,
    delimiter: str | None, decimal: str | None, na_values: str | None,
) -> None:
    """Upload a CSV FILE as a dataset (streamed in chunks, with a progress bar)."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, transient=True, disable=state.as_json or not err.is_terminal,
    ) as bar:
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
        # The client reads the file in chunks through a generator and reports after each one.
        dataset = state.client.create_dataset(
            file, name=name, project=project, id_column=id_column, **_csv_kwargs(delimiter, decimal, na_values),
            progress=lambda sent, total: bar.update(task, completed=sent, total=total),
        )
    emit(state, dataset, _show_dataset)


def _show_dataset(dataset: dict[str, Any]) -> None:
    fields({k: v for k, v in dataset.items() if k != "schema"}, title=f"dataset {dataset['id']}")
    table(
        ([c["name"], c["type"], c["missing"], c["distinct"]] for c in dataset.get("schema") or []),
        "column", "type", "missing", "distinct",
    )


@datasets.command("list")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--project", help="Only datasets of this project.")
@json_option
def datasets_list(state: State, offset: int, limit: int, project: str | None) -> None:
    """List datasets, newest first."""
    page = state.client.list_datasets(offset, limit, project=project)
    emit(state, page, lambda p: table(
        ([d.get(c) for c in DATASET_COLUMNS] for d in p["items"]), *DATASET_COLUMNS,
        title=_page_title("datasets", p),
    ))


@datasets.command("show")
@click.argument("dataset_id")
@json_option
def datasets_show(state: State, dataset_id: str) -> None:
    """Show a dataset."""
    emit(state, state.client.get_dataset(dataset_id), _show_dataset)


COLUMN_STATS = ("name", "type", "missing", "distinct", "min", "max", "mean", "median", "stddev")


@datasets.command("columns")
@click.argument("dataset_id")
@json_option
def datasets_columns(state: State, dataset_id: str) -> None:
    """Show each column's type and statistics (and a categorical one's most frequent categories)."""
    def human(columns: list[dict[str, Any]]) -> None:
        table(
            ([c.get(k) for k in COLUMN_STATS]
             + [", ".join(f"{t['category']} ({t['count']})" for t in c.get("top_categories") or [])]
             for c in columns),
            *COLUMN_STATS, "top categories", title=f"columns of {dataset_id}",
        )

    emit(state, state.client.dataset_columns(dataset_id), human)


@datasets.command("rows")
@click.argument("dataset_id")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def datasets_rows(state: State, dataset_id: str, offset: int, limit: int) -> None:
    """Show rows of a dataset."""
    page = state.client.rows(dataset_id, offset, limit)
    emit(state, page, lambda p: table(
        ([offset + i + 1, *row] for i, row in enumerate(p["items"])), "row", *p["columns"],
        title=f"rows {offset + 1}–{offset + len(p['items'])} of {p['total']}",
    ))


@datasets.command("delete")
@click.argument("dataset_id")
@json_option
def datasets_delete(state: State, dataset_id: str) -> None:
    """Delete a dataset."""
    state.client.delete_dataset(dataset_id)
    emit(state, {"deleted": dataset_id}, lambda r: out.print(f"deleted dataset {dataset_id}"))


# -- models ----------------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """k-means models fitted on datasets."""


MODEL_COLUMNS = ("id", "dataset_id", "status", "k", "inertia", "created_at")


def _model_row(model: dict[str, Any]) -> list[Any]:
    inertia = model.get("inertia")
    return [model["id"], model.get("dataset_id"), model["status"], (model.get("params") or {}).get("n_clusters"),
            None if inertia is None else f"{inertia:.6g}", model.get("created_at")]


@models.command("fit")
@click.argument("dataset_id")
@click.option("--k", "k", type=click.IntRange(min=1), default=8, show_default=True, help="Number of clusters.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Another KMeans parameter, e.g. --param random_state=0 --param init=random (repeatable).")
@click.option("--wait/--no-wait", default=False, help="Wait for the fit to finish, showing its progress.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Seconds to wait with --wait.")
@json_option
def models_fit(state: State, dataset_id: str, k: int, params: tuple[str, ...], wait: bool, wait_timeout: float) -> None:
    """Fit a model with K clusters on DATASET_ID (in the background unless --wait)."""
    chosen: dict[str, Any] = {"n_clusters": k}
    chosen.update(parse_param(p) for p in params)
    model = state.client.create_model(dataset_id, chosen)
    if wait:
        model = _wait(state, model, wait_timeout)
    emit(state, model, lambda m: fields(m, title=f"model {m['id']}"))
    if model["status"] == "failed":
        detail = (model.get("error") or {}).get("detail", "the fit failed")
        err.print(f"error: the fit of {model['id']} failed: {detail}", markup=False)
        sys.exit(EXIT_API_ERROR)


def _wait(state: State, model: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll until the fit ends, with a spinner and the fit's progress (when the server reports it)."""
    started = time.monotonic()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
        console=err, transient=True, disable=state.as_json or not err.is_terminal,
    ) as bar:
        task = bar.add_task(f"fitting {model['id']}", total=1.0, status=model["status"])

        def update(current: dict[str, Any]) -> None:
            progress = current.get("progress")
            status = current["status"] + (f" ({current['phase']})" if current.get("phase") else "")
            bar.update(task, completed=progress if isinstance(progress, (int, float)) else None,
                       status=f"{status}, {time.monotonic() - started:.0f} s")

        if model["status"] not in ACTIVE:
            return model
        return state.client.wait_for_model(model["id"], timeout=timeout, poll=0.25, on_update=update)


@models.command("list")
@click.option("--dataset", "dataset_id", help="Only models of this dataset.")
@click.option("--status", type=click.Choice(JOB_STATUSES))
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--project", help="Only models of this project.")
@json_option
def models_list(
    state: State, dataset_id: str | None, status: str | None, offset: int, limit: int, project: str | None
) -> None:
    """List models, newest first."""
    page = state.client.list_models(offset, limit, dataset_id=dataset_id, status=status, project=project)
    emit(state, page, lambda p: table(
        (_model_row(m) for m in p["items"]), *MODEL_COLUMNS, title=_page_title("models", p),
    ))


@models.command("show")
@click.argument("model_id")
@json_option
def models_show(state: State, model_id: str) -> None:
    """Show a model and the state of its fit."""
    emit(state, state.client.get_model(model_id), lambda m: fields(m, title=f"model {m['id']}"))


@models.command("centers")
@click.argument("model_id")
@json_option
def models_centers(state: State, model_id: str) -> None:
    """Show the cluster centers."""
    result = state.client.centers(model_id)
    emit(state, result, lambda r: table(
        ([label, *(f"{v:.6g}" for v in center)] for label, center in enumerate(r["centers"])),
        "label", *r["columns"], title=f"centers of {model_id}",
    ))


@models.command("labels")
@click.argument("model_id")
@json_option
def models_labels(state: State, model_id: str) -> None:
    """Print the training rows' labels, one per line."""
    emit(state, state.client.labels(model_id), lines)


@models.command("plot")
@click.argument("model_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Where to write the PNG.")
@json_option
def models_plot(state: State, model_id: str, output: Path) -> None:
    """Save a PNG scatter plot of the model's clusters (PCA when more than two features)."""
    png = state.client.plot(model_id)
    output.write_bytes(png)
    emit(state, {"model_id": model_id, "path": str(output), "bytes": len(png)},
         lambda r: out.print(f"wrote {r['path']} ({r['bytes']} bytes)"))


def parse_name(text: str) -> tuple[str, str | None]:
    """``CLUSTER=NAME`` (``CLUSTER=`` removes the name)."""
    cluster, sep, name = text.partition("=")
    if not sep or not cluster.strip():
        raise click.BadParameter(f"{text!r} is not CLUSTER=NAME (e.g. 0='bargain hunters')", param_hint="'NAMES'")
    return cluster.strip(), name.strip() or None


@models.command("name")
@click.argument("model_id")
@click.argument("names", nargs=-1, required=True, metavar="CLUSTER=NAME...")
@json_option
def models_name(state: State, model_id: str, names: tuple[str, ...]) -> None:
    """Name clusters: 0="bargain hunters" 1="big spenders"; CLUSTER= removes a name, others keep theirs."""
    model = state.client.name_clusters(model_id, dict(parse_name(n) for n in names))
    given = model.get("cluster_names") or {}
    sizes = model.get("cluster_sizes") or []
    emit(state, model, lambda m: table(
        ([c, given.get(str(c), ""), size] for c, size in enumerate(sizes)), "cluster", "name", "size",
        title=f"cluster names of {model_id}",
    ))


def _difference(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _show_profile(doc: dict[str, Any], top: int) -> None:
    table(([c["cluster"], c["name"], c["size"], f"{c['share']:.1%}", c["summary"]] for c in doc["clusters"]),
          "cluster", "name", "size", "share", "summary", title=f"profile of {doc['model_id']} ({doc['rows']} rows)")
    for cluster in doc["clusters"]:
        rows = []
        for entry in cluster["features"][:top]:
            if entry["type"] == "numeric":
                rows.append([entry["rank"], entry["name"], *(
                    "" if entry[k] is None else f"{entry[k]:.6g}" for k in ("mean", "median", "std")
                ), _difference(entry["difference"])])
            else:
                shares = {c["category"]: c for c in entry["categories"]}
                chosen = shares.get(entry["category"]) or {}
                share = chosen.get("share")
                overall = chosen.get("overall_share")
                rows.append([entry["rank"], f"{entry['name']}={entry['category']}",
                             "" if share is None else f"{share:.1%} (all {overall:.1%})", "", "",
                             _difference(entry["difference"])])
        name = f" {cluster['name']}" if cluster["name"] else ""
        table(rows, "rank", "feature", "mean / share", "median", "std", "difference (sd)",
              title=f"cluster {cluster['cluster']}{name}")


@models.command("profile")
@click.argument("model_id")
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Features shown per cluster, the most telling first.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the profile as CSV (every feature of every cluster).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Also write the heatmap of the differences (PNG) here.")
@json_option
def models_profile(state: State, model_id: str, top: int, as_csv: bool, plot: Path | None) -> None:
    """What sets each cluster apart: size, share, a summary line, and the features that differ most
    from all rows (means, medians and std in the data's units; differences in standard deviations)."""
    if plot is not None:
        png = state.client.profile_plot(model_id)
        plot.write_bytes(png)
        err.print(f"wrote {plot} ({len(png)} bytes)")
    if as_csv:
        click.echo(state.client.profile_csv(model_id), nl=False)
        return
    emit(state, state.client.profile(model_id), lambda doc: _show_profile(doc, top))


@models.command("cancel")
@click.argument("model_id")
@json_option
def models_cancel(state: State, model_id: str) -> None:
    """Cancel a queued or running fit."""
    emit(state, state.client.cancel_model(model_id), lambda m: out.print(f"model {m['id']} is {m['status']}"))


@models.command("pause")
@click.argument("model_id")
@json_option
def models_pause(state: State, model_id: str) -> None:
    """Pause a queued or running fit (its centers are kept; resume goes on from them)."""
    emit(state, state.client.pause_model(model_id), lambda m: out.print(f"model {m['id']} is {m['status']}"))


@models.command("resume")
@click.argument("model_id")
@json_option
def models_resume(state: State, model_id: str) -> None:
    """Queue a paused fit again, to go on from its checkpoint."""
    emit(state, state.client.resume_model(model_id), lambda m: out.print(f"model {m['id']} is {m['status']}"))


@models.command("copy")
@click.argument("model_id")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A fit option that replaces the model's (repeatable), e.g. --param n_clusters=5.")
@click.option("--dataset", "dataset_id", help="Fit this dataset instead of the model's.")
@json_option
def models_copy(state: State, model_id: str, params: tuple[str, ...], dataset_id: str | None) -> None:
    """Refit a model's dataset with its options, some of them changed."""
    options = {"dataset_id": dataset_id} if dataset_id else {}
    model = state.client.copy_model(model_id, dict(parse_param(p) for p in params), **options)
    emit(state, model, lambda m: out.print(f"model {m['id']} (a copy of {model_id}) is {m['status']}"))


@models.command("export")
@click.argument("model_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the document here (default: stdout).")
@click.pass_obj
def models_export(state: State, model_id: str, output: Path | None) -> None:
    """Export a fitted model as a portable JSON document (for `kmeans models import`)."""
    document = json.dumps(state.client.export_model(model_id), indent=2)
    if output is None:
        click.echo(document)
    else:
        output.write_text(document + "\n")
        err.print(f"wrote {output} ({output.stat().st_size} bytes)", markup=False)


@models.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--project", help="The project to put it in (default: the token's own).")
@json_option
def models_import(state: State, file: Any, project: str | None) -> None:
    """A new model from an exported JSON document FILE (- for stdin)."""
    try:
        document = json.loads(file.read())
    except ValueError as exc:
        raise click.BadParameter(f"not a JSON document: {exc}", param_hint="'FILE'") from None
    if not isinstance(document, dict):
        raise click.BadParameter("not an exported model (a JSON object)", param_hint="'FILE'")
    model = state.client.import_model(document, project=project)
    emit(state, model, lambda m: out.print(f"imported model {m['id']} ({m['status']})"))


@models.command("push")
@click.argument("model_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@json_option
def models_push(state: State, model_id: str, file: Path) -> None:
    """Move an online (minibatch) model's centers with the rows of a CSV FILE: a new version."""
    version = state.client.push_data(model_id, file)
    emit(state, version, lambda v: out.print(f"model {model_id} is at version {v['version']}"
                                             f" ({v['rows_added']} rows added)"))


VERSION_COLUMNS = ("version", "source", "rows_added", "created_at")


@models.command("versions")
@click.argument("model_id")
@json_option
def models_versions(state: State, model_id: str) -> None:
    """List the versions of an online model's centers (the current one marked)."""
    listing = state.client.list_versions(model_id)
    emit(state, listing, lambda r: table(
        ([*(v.get(c) for c in VERSION_COLUMNS), "current" if v["version"] == r["current"] else ""]
         for v in r["items"]),
        *VERSION_COLUMNS, "", title=f"versions of {model_id}",
    ))


@models.command("version")
@click.argument("model_id")
@click.argument("version", type=click.IntRange(min=1))
@json_option
def models_version(state: State, model_id: str, version: int) -> None:
    """Show one version of a model's centers."""
    emit(state, state.client.get_version(model_id, version),
         lambda v: fields(v, title=f"model {model_id}, version {version}"))


@models.command("restore")
@click.argument("model_id")
@click.argument("version", type=click.IntRange(min=1))
@json_option
def models_restore(state: State, model_id: str, version: int) -> None:
    """Go back to VERSION of a model's centers (kept as a new version)."""
    restored = state.client.restore_version(model_id, version)
    emit(state, restored, lambda v: out.print(f"model {model_id} is at version {v['version']} ({v['source']})"))


@models.command("watch")
@click.argument("model_id")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Stop watching after this many seconds.")
@json_option
def models_watch(state: State, model_id: str, wait_timeout: float) -> None:
    """Print each change of a fit (status, progress, phase) as it happens, until it ends."""
    _watch(state, state.client.model_events(model_id, timeout=wait_timeout))


def _watch(state: State, events: Iterable[Any]) -> None:
    """One line per event (JSON lines with --json)."""
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        if state.as_json:
            click.echo(json.dumps({"event": event.event, "id": event.id, "data": event.data}))
            continue
        progress = data.get("progress")
        shown = [data.get("kind") or event.event, data.get("id"), data.get("status"),
                 f"{progress:.0%}" if isinstance(progress, (int, float)) else None, data.get("phase")]
        out.print("  ".join(str(v) for v in shown if v not in (None, "")), markup=False)


@models.command("delete")
@click.argument("model_id")
@json_option
def models_delete(state: State, model_id: str) -> None:
    """Delete a model."""
    state.client.delete_model(model_id)
    emit(state, {"deleted": model_id}, lambda r: out.print(f"deleted model {model_id}"))


@cli.command()
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Jobs in this state (default: the live ones).")
@click.option("--kind", type=click.Choice(["fit", "sweep", "webhook", "evaluation", "scoring"]),
              help="Only jobs of this kind.")
@click.option("--project", help="Only jobs of this project (admins).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def jobs(state: State, status: str | None, kind: str | None, project: str | None, limit: int) -> None:
    """Show the queue: running jobs, then queued ones in the order they start."""
    page = state.client.list_jobs(0, limit, status=status, kind=kind, project=project)
    emit(state, page, lambda p: table(
        ([j["position"] or "", j["kind"], j["id"], j["project"], j["status"], j["phase"] or "",
          f"{j['progress']:.0%}"] for j in p["items"]),
        "place", "kind", "id", "project", "status", "phase", "progress", title=_page_title("jobs", p),
    ))


@cli.command()
@click.argument("model_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--distances", is_flag=True, help="Also each row's distance to its center.")
@click.option("--anomalies", is_flag=True,
              help="Also flag rows farther from their center than the model's anomaly threshold (or --threshold).")
@click.option("--threshold", type=float, help="The distance beyond which a row is an anomaly (implies --anomalies).")
@click.option("--version", "version", type=click.IntRange(min=1), help="Predict with this version of an online model.")
@csv_options
@json_option
def predict(
    state: State, model_id: str, file: Path, distances: bool, anomalies: bool, threshold: float | None,
    version: int | None, delimiter: str | None, decimal: str | None, na_values: str | None,
) -> None:
    """Label the points of a CSV FILE with MODEL_ID, one label per line (``id<TAB>label``, or
    with --json ``{"id", "label"}`` objects, when the file has the model's id column; the
    cluster's name after the label, ``label_name`` in JSON, when the model names its clusters).
    Columns are matched by name when the file has a header. With --distances or --anomalies each
    line also has the distance and the anomaly flag (tab-separated)."""
    anomalies = anomalies or threshold is not None
    result = state.client.predictions(
        model_id, file, distances=distances, anomalies=anomalies, threshold=threshold, version=version,
        **_csv_kwargs(delimiter, decimal, na_values),
    )
    extra = [name for name, asked in (("distance", distances), ("anomaly", anomalies)) if asked]
    ids = result.get("ids")
    names = result.get("label_names")
    if ids is None and names is None and not extra:
        emit(state, result["labels"], lines)
    else:
        records = [{"id": i, "label": label} for i, label in zip(ids, result["labels"], strict=True)] if ids else [
            {"label": label} for label in result["labels"]]
        for record, name in zip(records, names or [], strict=False):
            record["label_name"] = name
        for name in extra:
            for record, value in zip(records, result[f"{name}s" if name == "distance" else "anomalies"], strict=True):
                record[name] = value
        emit(state, records, lambda p: lines("\t".join(
            str(v).lower() if isinstance(v, bool) else "" if v is None else str(v) for v in x.values()) for x in p))
    for column, count in (result.get("unknown_categories") or {}).items():
        err.print(f"{count} value(s) of {column!r} are categories the model has not seen")


# -- access ----------------------------------------------------------------------------------


@cli.command()
@json_option
def whoami(state: State) -> None:
    """Show who requests run as: the token's role and project."""
    emit(state, state.client.whoami(), _describe_caller)


def _describe_caller(me: dict[str, Any]) -> None:
    if me.get("open"):
        out.print(f"{me['role']} (no token needed: this server has no tokens and serves only its own machine)")
        return
    if me.get("user"):
        user = me["user"]
        member = ", ".join(f"{m['role']} in {m['project']}" for m in user["memberships"]) or "no project"
        kind = "admin of every project" if user["admin"] else member
        scope = (f"acting as {me['role']} in {me['project'] or 'every project'}" if me.get("project_in_scope")
                 else "no project in scope: choose one with --project")
        out.print(f"user {user['name']} ({user['id']}; {kind}); {scope}; access token expires {me['expires_at']}")
        return
    where = f"project {me['project']}" if me.get("project") else "every project"
    expiry = f", expires {me['expires_at']}" if me.get("expires_at") else ""
    out.print(f"{me['role']} in {where} (token {me['token_id']}{expiry})")


@cli.group()
def projects() -> None:
    """Projects: what a guest or contributor token sees (admin)."""


PROJECT_COLUMNS = ("id", "description", "created_at")


@projects.command("create")
@click.argument("project_id")
@click.option("--description", default="", help="What the project is for.")
@json_option
def projects_create(state: State, project_id: str, description: str) -> None:
    """Create a project named PROJECT_ID (lower-case letters, digits, - and _)."""
    emit(state, state.client.create_project(project_id, description), lambda p: fields(p, title=f"project {p['id']}"))


@projects.command("list")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def projects_list(state: State, offset: int, limit: int) -> None:
    """List projects."""
    page = state.client.list_projects(offset, limit)
    emit(state, page, lambda p: table(
        ([r.get(c) for c in PROJECT_COLUMNS] for r in p["items"]), *PROJECT_COLUMNS,
        title=_page_title("projects", p),
    ))


@projects.command("show")
@click.argument("project_id")
@json_option
def projects_show(state: State, project_id: str) -> None:
    """Show a project."""
    emit(state, state.client.get_project(project_id), lambda p: fields(p, title=f"project {p['id']}"))


@projects.command("delete")
@click.argument("project_id")
@json_option
def projects_delete(state: State, project_id: str) -> None:
    """Delete a project; it must be empty (no datasets, models, sweeps or tokens that are not revoked)."""
    state.client.delete_project(project_id)
    emit(state, {"deleted": project_id}, lambda r: out.print(f"deleted project {project_id}"))


# -- signing in and users --------------------------------------------------------------------


def _read_password(prompt: str, from_stdin: bool, confirm: bool = False) -> str:
    """A password from stdin's first line (scripts) or asked for without echo (never an argument)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


@cli.command()
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@json_option
def login(state: State, username: str, password_stdin: bool) -> None:
    """Sign in as USERNAME; later commands act as this user until `kmeans logout`.

    The refresh token is kept in the config dir (mode 0600), never printed.
    """
    client = state.new_client(token="")
    grant = client.sign_in(username, _read_password("password", password_stdin))
    state.save_grant(grant, username)
    state._client, state.signed_in_as = client, username
    client.on_refresh = state.save_grant
    me = client.whoami()
    emit(state, me, lambda m: (err.print(f"signed in to {state.url}", markup=False), _describe_caller(m)))


@cli.command()
@json_option
def logout(state: State) -> None:
    """End the sign-in of `kmeans login` for this server (on the server too) and forget it."""
    with state.sessions.locked() as sessions:
        kept = sessions.pop(state.url, None)
    if kept is None:
        emit(state, {"signed_out": False}, lambda _: out.print(f"not signed in to {state.url}"))
        return
    with contextlib.suppress(Unauthorized):  # revoked or expired already: nothing is left to end
        state.new_client(token="", refresh_token=kept["refresh_token"]).sign_out()
    emit(state, {"signed_out": True, "username": kept.get("username")},
         lambda _: out.print(f"signed out {kept.get('username')} from {state.url}"))


@cli.command()
@click.option("--password-stdin", is_flag=True, help="Read the current and the new password from stdin's first lines.")
@click.pass_obj
def password(state: State, password_stdin: bool) -> None:
    """Change the signed-in user's own password (its other sign-ins end)."""
    current = _read_password("current password", password_stdin)
    new = _read_password("new password", password_stdin, confirm=not password_stdin)
    state.client.change_password(current, new)
    out.print("password changed; other sign-ins of this user are ended")


def parse_member(text: str) -> dict[str, str]:
    """``team-a:contributor`` as a membership (role guest when left out)."""
    project, _, role = text.partition(":")
    if not project:
        raise click.BadParameter(f"{text!r} is not PROJECT:ROLE")
    return {"project": project, "role": role or "guest"}


@cli.group()
def users() -> None:
    """Users: people who sign in, with a role in each of their projects (admin)."""


USER_COLUMNS = ("id", "name", "admin", "memberships", "created_at")


def _user_row(user: dict[str, Any]) -> list[Any]:
    member = ", ".join(f"{m['project']}:{m['role']}" for m in user["memberships"])
    return [user["id"], user["name"], "yes" if user["admin"] else "", member, user["created_at"]]


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin of every project.")
@click.option("--member", "members", multiple=True, metavar="PROJECT:ROLE",
              help="A membership (role guest or contributor); repeatable.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@json_option
def users_create(state: State, name: str, admin: bool, members: tuple[str, ...], password_stdin: bool) -> None:
    """Create user NAME; its password is asked for (twice), never an argument."""
    memberships = [parse_member(m) for m in members]
    secret = _read_password("password for " + name, password_stdin, confirm=not password_stdin)
    emit(state, state.client.create_user(name, secret, admin=admin, memberships=memberships),
         lambda u: fields(u, title=f"user {u['name']}"))


@users.command("list")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def users_list(state: State, offset: int, limit: int) -> None:
    """List users and their memberships."""
    page = state.client.list_users(offset, limit)
    emit(state, page, lambda p: table(map(_user_row, p["items"]), *USER_COLUMNS, title=_page_title("users", p)))


@users.command("show")
@click.argument("user_id")
@json_option
def users_show(state: State, user_id: str) -> None:
    """Show one user."""
    emit(state, state.client.get_user(user_id), lambda u: fields(u, title=f"user {u['name']}"))


@users.command("update")
@click.argument("user_id")
@click.option("--admin/--no-admin", default=None, help="Make or unmake an admin of every project.")
@click.option("--member", "members", multiple=True, metavar="PROJECT:ROLE",
              help="The user's memberships, all of them (replaces the ones it has); repeatable.")
@click.option("--no-members", is_flag=True, help="Remove every membership.")
@click.option("--password", "new_password", is_flag=True, help="Set a new password (asked for); ends its sign-ins.")
@click.option("--password-stdin", is_flag=True, help="With --password: read it from stdin's first line.")
@json_option
def users_update(state: State, user_id: str, admin: bool | None, members: tuple[str, ...], no_members: bool,
                 new_password: bool, password_stdin: bool) -> None:
    """Change a user's memberships, admin flag or password."""
    if members and no_members:
        raise click.UsageError("--member and --no-members exclude each other")
    memberships = [] if no_members else [parse_member(m) for m in members] or None
    secret = _read_password("new password", password_stdin, confirm=not password_stdin) if new_password else None
    if admin is None and memberships is None and secret is None:
        raise click.UsageError("nothing to change: give --admin/--no-admin, --member, --no-members or --password")
    record = state.client.update_user(user_id, admin=admin, memberships=memberships, password=secret)
    emit(state, record, lambda u: fields(u, title=f"user {u['name']}"))


@users.command("delete")
@click.argument("user_id")
@json_option
def users_delete(state: State, user_id: str) -> None:
    """Delete a user: its sign-ins are refused from the next request on."""
    state.client.delete_user(user_id)
    emit(state, {"deleted": user_id}, lambda _: out.print(f"deleted user {user_id}"))


@cli.group()
def tokens() -> None:
    """Bearer tokens: who may do what, in which project (admin)."""


TOKEN_COLUMNS = ("id", "name", "role", "project", "status", "expires_at", "created_at")


def _token_row(token: dict[str, Any]) -> list[Any]:
    return [token["id"], token.get("name"), token["role"], token.get("project") or "(all)", token.get("status"),
            token.get("expires_at"), token.get("created_at")]


@tokens.command("create")
@click.option("--role", type=click.Choice(["guest", "contributor", "admin"]), required=True,
              help="guest reads and predicts; contributor also creates and deletes; admin does everything.")
@click.option("--project", help="Where a guest or contributor token works (default: default); not for admin.")
@click.option("--name", help="What the token is for.")
@click.option("--expires-in", type=parse_duration, metavar="DURATION",
              help="Lifetime: seconds, or 90m, 12h, 30d (default: no expiry).")
@json_option
def tokens_create(state: State, role: str, project: str | None, name: str | None, expires_in: int | None) -> None:
    """Create a token and print its secret, which is shown only this once.

    The secret alone goes to stdout (TOKEN=$(kmeans tokens create …) works), what it is to
    stderr; with --json, stdout is the whole record, the secret in "token".
    """
    record = state.client.create_token(role, project=project, name=name, expires_in=expires_in)
    if state.as_json:
        click.echo(json.dumps(record, indent=2))
        return
    where = f"project {record['project']}" if record.get("project") else "every project"
    expiry = f", expires {record['expires_at']}" if record.get("expires_at") else ""
    err.print(f"created {record['role']} token {record['id']} ({where}{expiry}). Its secret is shown only"
              " this once: store it now (the server keeps only a hash).", markup=False)
    click.echo(record["token"])


@tokens.command("list")
@click.option("--project", help="Only tokens of this project.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def tokens_list(state: State, project: str | None, offset: int, limit: int) -> None:
    """List tokens (never their secrets)."""
    page = state.client.list_tokens(offset, limit, project=project)
    emit(state, page, lambda p: table(
        (_token_row(t) for t in p["items"]), *TOKEN_COLUMNS, title=_page_title("tokens", p),
    ))


@tokens.command("show")
@click.argument("token_id")
@json_option
def tokens_show(state: State, token_id: str) -> None:
    """Show a token (never its secret)."""
    emit(state, state.client.get_token(token_id), lambda t: fields(t, title=f"token {t['id']}"))


@tokens.command("revoke")
@click.argument("token_id")
@json_option
def tokens_revoke(state: State, token_id: str) -> None:
    """Revoke a token: the server refuses it from the next request on."""
    emit(state, state.client.revoke_token(token_id), lambda t: out.print(f"token {t['id']} is {t['status']}"))


@cli.group()
def sweeps() -> None:
    """Choose k: fit a range of k and compare them."""


SWEEP_RULES = ("consensus", "max_silhouette", "max_calinski_harabasz", "min_davies_bouldin", "elbow", "max_stability")


@sweeps.command("run")
@click.argument("dataset_id")
@click.option("--k-min", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--k-max", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A KMeans parameter shared by every k, e.g. --param standardize=true (repeatable).")
@click.option("--stability-runs", type=click.IntRange(0, 20), default=0, show_default=True,
              help="Bootstrap refits per k, to measure how stable each k is.")
@click.option("--rule", type=click.Choice(SWEEP_RULES), default="consensus", show_default=True,
              help="How the recommended k is chosen.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the sweep and show its table.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True)
@json_option
def sweeps_run(
    state: State, dataset_id: str, k_min: int, k_max: int, params: tuple[str, ...], stability_runs: int, rule: str,
    wait: bool, wait_timeout: float,
) -> None:
    """Sweep k_min..k_max on DATASET_ID; with --wait (the default), the per-k table and the choice."""
    shared = dict(parse_param(p) for p in params)
    sweep = state.client.create_sweep(dataset_id, k_min, k_max, shared or None,
                                      stability_runs=stability_runs, rule=rule)
    if wait:
        sweep = state.client.wait_for_sweep(sweep["id"], timeout=wait_timeout, poll=0.25)
    emit(state, sweep, _show_sweep)


@sweeps.command("show")
@click.argument("sweep_id")
@click.option("--rule", type=click.Choice(SWEEP_RULES), help="Rank the results by this rule instead.")
@json_option
def sweeps_show(state: State, sweep_id: str, rule: str | None) -> None:
    """A sweep's per-k table, its recommended k, the runner-up and each measure's pick."""
    emit(state, state.client.get_sweep(sweep_id, rule), _show_sweep)


SWEEP_COLUMNS = ("id", "dataset_id", "status", "k_min", "k_max", "recommended_k", "created_at")


@sweeps.command("list")
@click.option("--dataset", "dataset_id", help="Only sweeps of this dataset.")
@click.option("--project", help="Only sweeps of this project.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def sweeps_list(state: State, dataset_id: str | None, project: str | None, offset: int, limit: int) -> None:
    """List sweeps, newest first."""
    page = state.client.list_sweeps(offset, limit, dataset_id=dataset_id, project=project)
    emit(state, page, lambda p: table(
        ([w.get(c) for c in SWEEP_COLUMNS] for w in p["items"]), *SWEEP_COLUMNS, title=_page_title("sweeps", p),
    ))


@sweeps.command("cancel")
@click.argument("sweep_id")
@json_option
def sweeps_cancel(state: State, sweep_id: str) -> None:
    """Cancel a queued or running sweep."""
    emit(state, state.client.cancel_sweep(sweep_id), lambda w: out.print(f"sweep {w['id']} is {w['status']}"))


@sweeps.command("delete")
@click.argument("sweep_id")
@json_option
def sweeps_delete(state: State, sweep_id: str) -> None:
    """Delete a sweep (a running one is cancelled first)."""
    state.client.delete_sweep(sweep_id)
    emit(state, {"deleted": sweep_id}, lambda r: out.print(f"deleted sweep {sweep_id}"))


@sweeps.command("plot")
@click.argument("sweep_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Where to write the PNG.")
@json_option
def sweeps_plot(state: State, sweep_id: str, output: Path) -> None:
    """Save a PNG of each measure over k, the recommended k marked."""
    png = state.client.sweep_plot(sweep_id)
    output.write_bytes(png)
    emit(state, {"sweep_id": sweep_id, "path": str(output), "bytes": len(png)},
         lambda r: out.print(f"wrote {r['path']} ({r['bytes']} bytes)"))


@sweeps.command("watch")
@click.argument("sweep_id")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Stop watching after this many seconds.")
@json_option
def sweeps_watch(state: State, sweep_id: str, wait_timeout: float) -> None:
    """Print each change of a sweep as it happens, until it ends."""
    _watch(state, state.client.sweep_events(sweep_id, timeout=wait_timeout))


@cli.command()
@click.option("--project", help="Events of this project (admins; default: every project for an admin).")
@click.option("--last-event-id", help="Start after this event (what happened since), not with what happens next.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Stop watching after this many seconds.")
@json_option
def events(
    state: State, project: str | None, last_event_id: str | None, max_events: int | None, wait_timeout: float
) -> None:
    """Print every job change of the project (fits, sweeps, deliveries, pushes) as it happens."""
    stream = state.client.project_events(project=project, last_event_id=last_event_id, timeout=wait_timeout)
    _watch(state, itertools.islice(stream, max_events))


def _show_sweep(sweep: dict[str, Any]) -> None:
    def mark(k: int) -> str:
        return "recommended" if k == sweep.get("recommended_k") else "runner-up" if k == sweep.get("runner_up") else ""

    def number(value: Any) -> str:
        return "" if value is None else f"{value:.4g}"

    rows = [
        [r["k"], number(r.get("inertia")), number(r.get("silhouette")), number(r.get("calinski_harabasz")),
         number(r.get("davies_bouldin")), number((r.get("stability") or {}).get("mean")), mark(r["k"])]
        for r in sweep.get("results") or []
    ]
    title = f"sweep {sweep['id']}: {sweep['status']}"
    if sweep.get("recommended_k") is not None:
        title += f", k={sweep['recommended_k']} by {sweep['rule']}"
    table(rows, "k", "inertia", "silhouette", "Calinski-Harabasz", "Davies-Bouldin", "stability", "", title=title)
    if sweep.get("votes"):
        out.print("votes: " + ", ".join(f"{measure} k={k}" for measure, k in sweep["votes"].items()))
    for warning in sweep.get("warnings") or []:
        err.print(f"warning: {warning}", markup=False)
    if sweep["status"] == "failed":
        err.print(f"error: {(sweep.get('error') or {}).get('detail', 'the sweep failed')}", markup=False)
        sys.exit(EXIT_API_ERROR)


@cli.group()
def evaluations() -> None:
    """How a fitted model holds on a dataset: quality, drift against training, known labels."""


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


def _flag(drifted: bool | None) -> str:
    return "" if drifted is None else "DRIFT" if drifted else "ok"


def _show_evaluation(evaluation: dict[str, Any]) -> None:
    title = f"evaluation {evaluation['id']} of {evaluation['model_id']} on {evaluation['dataset_id']}:" \
        f" {evaluation['status']}"
    result = evaluation.get("result")
    if not result:
        fields(evaluation, title=title)
        if evaluation["status"] == "failed":
            err.print(f"error: {(evaluation.get('error') or {}).get('detail', 'the evaluation failed')}",
                      markup=False)
            sys.exit(EXIT_API_ERROR)
        return
    measures = [("rows", result["rows"]), ("rows left out", result["rows_left_out"]),
                ("mean squared distance", _number(result["mean_squared_distance"])),
                ("silhouette", _number(result["silhouette"])), ("Davies-Bouldin", _number(result["davies_bouldin"])),
                ("Calinski-Harabasz", _number(result["calinski_harabasz"]))]
    table(measures, "measure", "value", title=title)
    table(([c["cluster"], c["rows"], f"{c['share']:.1%}",
            "" if c["training_share"] is None else f"{c['training_share']:.1%}"] for c in result["clusters"]),
          "cluster", "rows", "share", "training share", title="cluster shares")
    drift = result["drift"]
    table([["PSI of cluster shares", _number(drift["psi"]), f"> {drift['psi_threshold']:g}",
            _flag(drift["shares_drifted"])],
           ["KS statistic of distances", _number(drift["ks_statistic"]),
            f"p < {drift['ks_pvalue_threshold']:g} and >= {drift['ks_statistic_threshold']:g}"
            + ("" if drift["ks_pvalue"] is None else f" (p = {drift['ks_pvalue']:.3g})"),
            _flag(drift["distances_drifted"])]],
          "drift", "value", "flagged when", "", title="drift against training")
    labels = result.get("labels")
    if labels:
        scores = [("adjusted Rand", labels["adjusted_rand"]), ("NMI", labels["nmi"]),
                  ("homogeneity", labels["homogeneity"]), ("completeness", labels["completeness"]),
                  ("V-measure", labels["v_measure"]), ("purity", labels["purity"])]
        table(((name, _number(v)) for name, v in scores), "score", "value",
              title=f"against {labels['column']!r} ({labels['rows']} rows with a label)")
        grid = labels["contingency"]
        table(([c, *counts, majority["label"] or "", "" if majority["share"] is None else f"{majority['share']:.1%}"]
               for c, counts, majority in zip(grid["clusters"], grid["counts"], labels["majority"], strict=True)),
              "cluster", *grid["labels"], "majority", "share", title="clusters x labels")


@evaluations.command("run")
@click.argument("model_id")
@click.argument("dataset_id")
@click.option("--label-column", help="A column of DATASET_ID with known labels (not one of the model's features).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the result and show it.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True)
@json_option
def evaluations_run(
    state: State, model_id: str, dataset_id: str, label_column: str | None, wait: bool, wait_timeout: float
) -> None:
    """Evaluate MODEL_ID on DATASET_ID; with --wait (the default), the measures, drift and label scores."""
    evaluation = state.client.create_evaluation(model_id, dataset_id, label_column)
    if wait:
        evaluation = state.client.wait_for_evaluation(model_id, evaluation["id"], timeout=wait_timeout, poll=0.25)
    emit(state, evaluation, _show_evaluation)


@evaluations.command("show")
@click.argument("model_id")
@click.argument("evaluation_id")
@json_option
def evaluations_show(state: State, model_id: str, evaluation_id: str) -> None:
    """An evaluation's state, measures, drift and label scores."""
    emit(state, state.client.get_evaluation(model_id, evaluation_id), _show_evaluation)


@evaluations.command("list")
@click.argument("model_id")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def evaluations_list(state: State, model_id: str, offset: int, limit: int) -> None:
    """List MODEL_ID's evaluations, newest first."""
    page = state.client.list_evaluations(model_id, offset, limit)

    def row(e: dict[str, Any]) -> list[Any]:
        result = e.get("result") or {}
        drift = result.get("drift") or {}
        scores = result.get("labels") or {}
        return [e["id"], e["dataset_id"], e["status"], e.get("label_column"), result.get("rows"),
                _number(result.get("silhouette")), _flag(drift.get("shares_drifted")),
                _flag(drift.get("distances_drifted")), _number(scores.get("adjusted_rand")), e.get("created_at")]

    emit(state, page, lambda p: table(
        (row(e) for e in p["items"]), "id", "dataset_id", "status", "label_column", "rows", "silhouette",
        "shares", "distances", "ARI", "created_at", title=_page_title("evaluations", p),
    ))


@evaluations.command("cancel")
@click.argument("model_id")
@click.argument("evaluation_id")
@json_option
def evaluations_cancel(state: State, model_id: str, evaluation_id: str) -> None:
    """Cancel a queued or running evaluation."""
    emit(state, state.client.cancel_evaluation(model_id, evaluation_id),
         lambda e: out.print(f"evaluation {e['id']} is {e['status']}"))


@evaluations.command("delete")
@click.argument("model_id")
@click.argument("evaluation_id")
@json_option
def evaluations_delete(state: State, model_id: str, evaluation_id: str) -> None:
    """Delete an evaluation."""
    state.client.delete_evaluation(model_id, evaluation_id)
    emit(state, {"deleted": evaluation_id}, lambda r: out.print(f"deleted evaluation {evaluation_id}"))


@models.command("compare")
@click.argument("model_id")
@click.argument("other_model_id")
@click.option("--dataset", "dataset_id", help="Label this dataset's rows (default: MODEL_ID's training data).")
@json_option
def models_compare(state: State, model_id: str, other_model_id: str, dataset_id: str | None) -> None:
    """How MODEL_ID and OTHER_MODEL_ID agree on a dataset: ARI, NMI, matched clusters, rows that changed."""
    result = state.client.compare_models(model_id, other_model_id, dataset_id)

    def show(r: dict[str, Any]) -> None:
        table([("rows", r["rows"]), ("adjusted Rand", _number(r["adjusted_rand"])), ("NMI", _number(r["nmi"])),
               ("rows that changed cluster", f"{r['changed_rows']} ({r['changed_share']:.1%})")],
              "measure", "value", title=f"{model_id} against {other_model_id} on {r['dataset_id']}")
        table(([m["cluster"], m["other_cluster"], m["rows"], "" if m["share"] is None else f"{m['share']:.1%}"]
               for m in r["matching"]), "cluster", "other cluster", "rows in both", "share", title="matched clusters")
        for name, left in (("clusters", r["unmatched_clusters"]), ("other clusters", r["unmatched_other_clusters"])):
            if left:
                out.print(f"unmatched {name}: {', '.join(map(str, left))}")

    emit(state, result, show)


# -- batch scorings --------------------------------------------------------------------------


@cli.group()
def scorings() -> None:
    """Batch scoring: label every row of a stored dataset with a model, in the background."""


SCORING_COLUMNS = ("id", "dataset_id", "status", "rows", "rows_scored", "anomalies", "created_at")


def _scoring_row(scoring: dict[str, Any]) -> list[Any]:
    return [scoring["id"], scoring["dataset_id"], scoring["status"], scoring["rows"], scoring["rows_scored"],
            scoring.get("anomalies"), scoring.get("created_at")]


def _show_scoring(scoring: dict[str, Any]) -> None:
    title = f"scoring {scoring['id']} of model {scoring['model_id']}: {scoring['status']}"
    title += f", {scoring['rows_scored']} of {scoring['rows']} rows"
    sizes = scoring.get("cluster_sizes") or []
    total = sum(sizes) or 1
    table(([label, size, f"{size / total:.1%}"] for label, size in enumerate(sizes)), "label", "rows", "share",
          title=title)
    if scoring.get("threshold") is not None:
        out.print(f"anomalies: {scoring.get('anomalies')} (distance above {scoring['threshold']:.6g})")
    for column, count in (scoring.get("unknown_categories") or {}).items():
        err.print(f"{count} value(s) of {column!r} are categories the model has not seen")
    if scoring["status"] == "failed":
        err.print(f"error: {(scoring.get('error') or {}).get('detail', 'the scoring failed')}", markup=False)
        sys.exit(EXIT_API_ERROR)


def _result_format(output: Path, chosen: str | None) -> str:
    return chosen or ("parquet" if output.suffix.lower() in (".parquet", ".pq") else "csv")


def _download(state: State, model_id: str, scoring_id: str, output: Path, chosen: str | None) -> dict[str, Any]:
    form = _result_format(output, chosen)
    written = state.client.download_scoring(model_id, scoring_id, output, format=form)
    return {"model_id": model_id, "scoring_id": scoring_id, "path": str(output), "format": form, "bytes": written}


@scorings.command("run")
@click.argument("model_id")
@click.argument("dataset_id")
@click.option("--threshold", type=click.FloatRange(min=0), help="Flag rows farther than this from their center.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the result here once it is done (.parquet: Parquet, else CSV).")
@click.option("--format", "chosen", type=click.Choice(["csv", "parquet"]), help="The format of --output.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the scoring and show its table.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=3600, show_default=True)
@json_option
def scorings_run(
    state: State, model_id: str, dataset_id: str, threshold: float | None, output: Path | None, chosen: str | None,
    wait: bool, wait_timeout: float,
) -> None:
    """Score every row of DATASET_ID with MODEL_ID; with --wait (the default), rows per label."""
    scoring = state.client.create_scoring(model_id, dataset_id, threshold=threshold)
    if wait or output is not None:
        scoring = state.client.wait_for_scoring(model_id, scoring["id"], timeout=wait_timeout, poll=0.25)
    if output is not None and scoring["status"] == "succeeded":
        saved = _download(state, model_id, scoring["id"], output, chosen)
        err.print(f"wrote {saved['path']} ({saved['format']}, {saved['bytes']} bytes)", markup=False)
    emit(state, scoring, _show_scoring)


@scorings.command("list")
@click.argument("model_id")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def scorings_list(state: State, model_id: str, offset: int, limit: int) -> None:
    """List a model's scorings, newest first."""
    page = state.client.list_scorings(model_id, offset, limit)
    emit(state, page, lambda p: table(
        (_scoring_row(s) for s in p["items"]), *SCORING_COLUMNS, title=_page_title(f"scorings of {model_id}", p),
    ))


@scorings.command("show")
@click.argument("model_id")
@click.argument("scoring_id")
@json_option
def scorings_show(state: State, model_id: str, scoring_id: str) -> None:
    """A scoring's state and rows per label."""
    emit(state, state.client.get_scoring(model_id, scoring_id), _show_scoring)


@scorings.command("rows")
@click.argument("model_id")
@click.argument("scoring_id")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def scorings_rows(state: State, model_id: str, scoring_id: str, offset: int, limit: int) -> None:
    """A page of a scoring's result: id, row, label, distance, anomaly."""
    page = state.client.scoring_rows(model_id, scoring_id, offset, limit)

    def show(p: dict[str, Any]) -> None:
        columns = [c for c in ("id", "row", "label", "distance", "anomaly") if p["items"] and c in p["items"][0]]
        rows = ([f"{r[c]:.6g}" if c == "distance" else r[c] for c in columns] for r in p["items"])
        table(rows, *columns, title=_page_title("rows", p))

    emit(state, page, show)


@scorings.command("download")
@click.argument("model_id")
@click.argument("scoring_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Where to write the result (.parquet: Parquet, else CSV).")
@click.option("--format", "chosen", type=click.Choice(["csv", "parquet"]), help="Override the format of --output.")
@json_option
def scorings_download(state: State, model_id: str, scoring_id: str, output: Path, chosen: str | None) -> None:
    """Save a scoring's whole result as CSV or Parquet (streamed)."""
    emit(state, _download(state, model_id, scoring_id, output, chosen),
         lambda r: out.print(f"wrote {r['path']} ({r['format']}, {r['bytes']} bytes)"))


@scorings.command("cancel")
@click.argument("model_id")
@click.argument("scoring_id")
@json_option
def scorings_cancel(state: State, model_id: str, scoring_id: str) -> None:
    """Cancel a queued or running scoring."""
    emit(state, state.client.cancel_scoring(model_id, scoring_id),
         lambda s: out.print(f"scoring {s['id']} is {s['status']}"))


@scorings.command("delete")
@click.argument("model_id")
@click.argument("scoring_id")
@json_option
def scorings_delete(state: State, model_id: str, scoring_id: str) -> None:
    """Delete a scoring and its result."""
    state.client.delete_scoring(model_id, scoring_id)
    emit(state, {"deleted": scoring_id}, lambda r: out.print(f"deleted scoring {scoring_id}"))


def _page_title(what: str, page: dict[str, Any]) -> str:
    shown = len(page["items"])
    if not shown:
        return f"no {what}" + (f" after {page['offset']}" if page["offset"] else "")
    return f"{what} {page['offset'] + 1}–{page['offset'] + shown} of {page['total']}"


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    cli.main(args=argv, prog_name="kmeans", obj={}, auto_envvar_prefix=None)


if __name__ == "__main__":  # python -m kmeans.cli
    main()
