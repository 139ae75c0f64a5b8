"""The layer contracts of docs/architecture.md, checked by import-linter on the package as installed.

import-linter (grimp) finds a package's modules by walking its folder, and cavlab's subpackages
live in other folders of the repository (pyproject's package-dir): the test lays the package out
as a wheel would, in one tree, and runs `lint-imports` on it with the contracts of pyproject.toml.
Every import counts, at module level or inside a function.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def lay_out(target: Path) -> Path:
    """The `cavlab` package as one tree under `target` (as installed from a wheel)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(ROOT / folder, target.joinpath(*package.split(".")), ignore=ignore, dirs_exist_ok=True)
    return target


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lay_out(tmp_path_factory.mktemp("layout"))


def test_the_layers_hold(tree: Path) -> None:
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cavlab layers KEPT" in done.stdout


WRONG_WAY = [  # (module, the import appended to it, the broken dependency lint-imports names)
    ("world.py", "from cavlab.cli import app", "cavlab.world -> cavlab.cli"),
    ("config/scenario.py", "from cavlab.controllers import CONTROLLERS",
     "cavlab.config.scenario -> cavlab.controllers"),
    ("perception/fusion.py", "def _late():\n    from cavlab.hw.targets import targets",
     "cavlab.perception.fusion -> cavlab.hw"),
    ("controllers/base.py", "import cavlab.perception", "cavlab.controllers.base -> cavlab.perception"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "wrong_import", "broken"), WRONG_WAY)
def test_a_wrong_way_import_breaks_the_contract(tmp_path: Path, module: str, wrong_import: str, broken: str) -> None:
    tree = lay_out(tmp_path)
    path = tree / "cavlab" / module
    path.write_text(path.read_text() + f"\n\n{wrong_import}\n")
    done = lint_imports(tree)
    assert done.returncode == 1 and "cavlab layers BROKEN" in done.stdout, done.stdout + done.stderr
    assert broken in done.stdout
