"""The module graph: which layers may load which (the direction of dependencies is a design rule)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        # The horse runs the user's code: it knows the shape of an Outcome, never the writer of job state.
        ("workerd.horse", "workerd.commit"),
        # A report is read by the master and the metrics process, which never write job state.
        ("workerd.reports", "workerd.commit"),
        ("workerd.pipelines", "workerd.commit"),
        # The library never depends on a CLI module: CLI -> library only.
        ("workerd.metrics", "workerd.info"),
        ("workerd.metrics", "workerd.cli"),
    ],
)
def test_a_module_does_not_load_a_layer_it_must_not_depend_on(importer: str, forbidden: str) -> None:
    code = f"import sys, {importer}; assert {forbidden!r} not in sys.modules, 'loaded'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
