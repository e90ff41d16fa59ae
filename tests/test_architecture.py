"""The house rules of the code base, checked: the import contract in pyproject.toml (layers, no cycles, no torch
in the pure layers; docs/architecture.md draws it) and small functions on the model-touching paths."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the ``mmsift`` package under ``root/src``, with ``root/pyproject.toml``'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contract_holds():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same check on a copy of the package where the data layer imports the probe: it must fail and say so."""
    shutil.copytree(ROOT / "src" / "mmsift", tmp_path / "src" / "mmsift",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    records = tmp_path / "src" / "mmsift" / "data" / "records.py"
    records.write_text(records.read_text() + "\n\ndef _upward():\n    from mmsift.probe import runner  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "mmsift.data.records -> mmsift.probe.runner" in result.stdout
    assert "Layers: each room imports only from the rooms below it BROKEN" in " ".join(result.stdout.split())


MAX_LINES = 80
MAX_PARAMS = 10
SMALL_FUNCTION_PACKAGES = ("probe", "train", "models")


def long_functions(package: Path) -> list[str]:
    """``file:line name (lines, parameters)`` of every function over the limits (``self``/``cls`` not counted),
    files named relative to ``package``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
            n_params = len([p for p in params if p.arg not in ("self", "cls")])
            n_lines = node.end_lineno - node.lineno + 1
            if n_lines > MAX_LINES or n_params > MAX_PARAMS:
                found.append(f"{path.relative_to(package)}:{node.lineno} {node.name} ({n_lines} lines, {n_params} params)")
    return found


@pytest.mark.parametrize("package", SMALL_FUNCTION_PACKAGES)
def test_functions_on_the_model_paths_stay_small(package):
    assert long_functions(ROOT / "src" / "mmsift" / package) == []


def test_the_size_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n\ndef wide({', '.join(f'a{i}' for i in range(11))}):"
                                   "\n    pass\n", encoding="utf-8")
    found = long_functions(tmp_path)
    assert [f.split(" ", 1)[1] for f in found] == [f"long ({MAX_LINES + 1} lines, 0 params)", "wide (2 lines, 11 params)"]
