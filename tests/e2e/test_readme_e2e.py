"""End to end: every ```bash block of README.md runs top to bottom, as written, against ``python server.py``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

# Commands the walk-through cannot run here, each for a stated reason; a line matching none of these
# and not starting with a runnable program (RUNNABLE) fails the test, so nothing is skipped silently.
SKIPPED = [
    (re.compile(r"^pip\b"), "installs packages"),
    (re.compile(r"^python -m pytest\b"), "runs the test suite"),
    (re.compile(r"^python (server\.py|examples/flask_mount\.py)\b"), "starts a server (the test started one)"),
    (re.compile(r"\bcreate-token\b"), "mints an admin token"),
    (re.compile(r"\$TOKEN\b"), "needs an admin token"),
    (re.compile(r"localhost:8080/shop/"), "a route of the Flask mount example's own server (skipped above)"),
    (re.compile(r"/kmeans/auth/|Bearer km[ar]_"), "signs in as a user that create-user (skipped) would make"),
    (re.compile(r"^kmeans (login|logout|password|users)\b"), "needs a user that create-user (skipped) would make"),
    (re.compile(r"^(\S+=\S+\s+)*gunicorn\b"), "starts a server"),
    (re.compile(r"^docker\b"), "needs docker"),
    (re.compile(r"^dask (scheduler|worker)\b"), "starts a dask cluster"),
    (re.compile(r"^(openapi-python-client|openapi-generator-cli|npx @hey-api/openapi-ts)\b"),
     "runs a code generator (tests/e2e/test_generated_clients.py runs them)"),
    (re.compile(r"^kmeans (projects create|tokens create)\b"), "admin commands (the server has no auth here)"),
]
RUNNABLE = ("curl", "kmeans", "cd")
MIN_RUN = 40  # the README's walk-through has more commands than this; fewer means extraction broke

# Placeholders read from the server: the newest resource of the kind (lists are newest first).
NEWEST = {"ds": "/kmeans/datasets?limit=1", "m": "/kmeans/models?limit=1", "sw": "/kmeans/sweeps?limit=1"}
PLACEHOLDER = re.compile(r"\b([a-z]{1,3})_…")
ID = re.compile(r"\b([a-z]{1,3})_[0-9a-zA-Z]{6,}\b")


def bash_blocks(readme: str) -> list[tuple[int, str]]:
    """Each ```bash block of ``readme`` with its first line number, in order."""
    return [(readme[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```bash\n(.*?)```", readme, re.S)]


def logical_lines(block: str) -> list[str]:
    """The block's lines, backslash continuations joined, blank and comment-only lines dropped."""
    text = block.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, split on ``;`` and ``&&``, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&"):
            out.append([])
        else:
            out[-1].append(token)
    return [cmd for cmd in out if cmd]


def skip_reason(line: str) -> str | None:
    """Why ``line`` is not run, or None when it must run."""
    return next((why for pattern, why in SKIPPED if pattern.search(line)), None)


class Walk:
    """One shell session over the README: a working directory carried across blocks, ids seen so far."""

    def __init__(self, url: str, root: Path, env: dict[str, str]) -> None:
        """Start at ``root``, talking to ``url``."""
        self.url, self.cwd, self.env = url, root, env
        self.seen: dict[str, str] = {}
        self.ran: list[str] = []

    def resolve(self, kind: str, where: str) -> str:
        """The id a ``kind_…`` placeholder stands for: the newest of its kind on the server, else the last printed."""
        if kind in NEWEST:
            body = httpx.get(self.url + NEWEST[kind], timeout=30).json()
            items = body if isinstance(body, list) else next(v for v in body.values() if isinstance(v, list))
            assert items, f"{where}: placeholder {kind}_… but no {kind} resource exists yet"
            return items[0]["id"]
        assert kind in self.seen, f"{where}: placeholder {kind}_… but no command printed a {kind}_ id before"
        return self.seen[kind]

    def substitute(self, arg: str, where: str) -> str:
        """``arg`` with the README's server address and id placeholders replaced."""
        arg = re.sub(r"(https?://)?(localhost|127\.0\.0\.1):8080", self.url, arg)
        return PLACEHOLDER.sub(lambda m: self.resolve(m.group(1), where), arg)

    def run(self, argv: list[str], where: str) -> None:
        """Run one simple command as the README's reader would; fail with its output unless it succeeds."""
        argv = [self.substitute(a, where) for a in argv]
        if argv[0] == "cd":
            assert len(argv) == 2, f"{where}: {argv}"
            target = (self.cwd / argv[1]).resolve()
            assert target.is_dir(), f"{where}: cd {argv[1]} from {self.cwd}: no such directory"
            self.cwd = target
            self.ran.append(shlex.join(argv))
            return
        if argv[0] == "curl":
            # -sS: no progress meter; --fail-with-body: a 4xx/5xx exits 22 and keeps the problem for the message.
            argv = [*argv, "-sS", "--fail-with-body"]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        elif argv[0] == "kmeans":
            argv = [sys.executable, "-m", "kmeans.cli", *argv[1:]]
        done = subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (
            f"{where}: {shlex.join(argv)} (cwd {self.cwd}) exited {done.returncode}:\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-2000:]}"
        )
        for match in ID.finditer(done.stdout):
            self.seen[match.group(1)] = match.group(0)
        self.ran.append(shlex.join(argv))


def test_the_readme_walk_through_runs_top_to_bottom(embedded_server, tmp_path: Path) -> None:
    """Every runnable command of README.md's bash blocks succeeds in order against a fresh server."""
    readme = (ROOT / "README.md").read_text()
    # A copy of the repository's root as the reader's checkout: commands write files (PNGs, exports) into it.
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(ROOT / "examples", root / "examples")
    for name in ("README.md", "api.yaml"):
        shutil.copy(ROOT / name, root / name)
    with embedded_server(tmp_path / "data") as url:
        env = {**os.environ, "KMEANS_URL": url, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
        env.pop("KMEANS_TOKEN", None)
        walk = Walk(url, root, env)
        skipped: list[str] = []
        for start, block in bash_blocks(readme):
            for n, line in enumerate(logical_lines(block)):
                where = f"README.md block at line {start}, command {n + 1}"
                if skip_reason(line):
                    skipped.append(line)
                    continue
                for argv in commands(line):
                    runnable = argv[0] in RUNNABLE or argv[:1] == ["python"] and (
                        argv[1] == "-c" or argv[1].startswith("examples/"))
                    assert runnable, f"{where}: {shlex.join(argv)!r} is neither runnable nor in SKIPPED"
                    walk.run(argv, where)
    assert len(walk.ran) >= MIN_RUN, f"only {len(walk.ran)} commands ran: {walk.ran}"
    assert skipped, "the install and server commands were expected to be skipped"
