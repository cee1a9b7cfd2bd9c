"""The benchmark stays runnable: ``bench/run.py --quick`` against the production command.

Its figures are not judged here (CI times nothing); what must hold is that every item runs,
and the script's own checks pass: the service's labels and predictions equal the in-process
ones of pandas + scikit-learn, and for the mixed-type table (item 5: CSV raw and multipart,
Parquet) its labels agree with those of the ColumnTransformer + KMeans equivalent.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

ROWS = ["1 ", "1b", "2 ", "3 ", "4 ", "4 ", "5 ", "5a", "5b", "5c", "5m", "5n", "5p", "6 "]


def test_the_benchmark_runs_every_item_and_its_results_agree_with_in_process_ones():
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = lines[start : lines.index("", start)]  # the table: from under its header to the blank line
    assert [row[:2] for row in rows] == ROWS, done.stdout
    assert "ERROR" not in done.stdout and "FAILED" not in done.stdout, done.stdout
    assert "labels identical to in-process in every run: yes" in done.stdout
    agreement = next(row for row in rows if row.startswith("5a"))
    assert agreement.rstrip().endswith("PASS"), done.stdout  # adjusted Rand index >= 0.99 in every way
    assert "agreement as expected" in done.stdout
