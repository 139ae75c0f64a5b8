"""The docs stay true: every `console` block of the quickstart is what its commands print today."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _console_blocks():
    spec = importlib.util.spec_from_file_location("console_blocks", DOCS / "console_blocks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.sumo
def test_the_quickstart_shows_what_its_commands_print(tmp_path: Path) -> None:
    problems = _console_blocks().process(DOCS / "quickstart.md", tmp_path, write=False)
    assert not problems, (
        "\n\n".join(problems) + "\n\nregenerate: python docs/console_blocks.py docs/quickstart.md --write"
    )
    # what the page says of these runs: traci gives libsumo's metrics, and a run's scenario.yaml reproduces it
    metrics = {name: json.loads((tmp_path / "runs" / name / "summary.json").read_text())["metrics"]
               for name in ("docs-run-hlc", "docs-run-traci", "docs-run-rerun")}  # fmt: skip
    assert metrics["docs-run-traci"] == metrics["docs-run-hlc"] == metrics["docs-run-rerun"]
