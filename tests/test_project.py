"""Rules of the code base that no behaviour test would notice: pytest's markers, serving code without
``assert``, one definition of each shared constant, tests that point at files inside the repository."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVING = [ROOT / "python_backend_models", ROOT / "client" / "trilate", ROOT / "ensembles"]


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_markers_are_strict_and_every_declared_marker_is_used():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"].split(), "a misspelt marker must fail, not pass silently"
    declared = {line.split(":", 1)[0].strip() for line in options["markers"]}
    tests = "\n".join(p.read_text(encoding="utf-8") for p in python_files(ROOT / "tests"))
    unused = {name for name in declared if not re.search(rf"\bpytest\.mark\.{name}\b", tests)}
    assert not unused, f"declared but never used: {sorted(unused)}"


def test_serving_code_has_no_assert():
    """``python -O`` drops asserts; serving code says what is wrong with an exception instead."""
    found = []
    for path in python_files(*SERVING):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assert):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


def test_the_default_model_is_named_once():
    literal = "sentence-transformers/all-MiniLM-L6-v2"
    definitions = []
    for path in python_files(*SERVING):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == literal:
                definitions.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(definitions) == 1, definitions
    from python_backend_models.checkpoint import DEFAULT_MODEL
    from trilate import cli

    assert cli.DEFAULT_MODEL is DEFAULT_MODEL


def test_the_purpose_parameter_is_documented_as_what_it_does():
    """``purpose`` changes the length error's wording and, for "tokenize", turns the length check off."""
    source = (ROOT / "python_backend_models" / "contract.py").read_text(encoding="utf-8")
    line = next(line for line in source.splitlines() if line.startswith("PARAM_PURPOSE"))
    assert "only changes the wording" not in line
    assert "tokenize" in line and "length check" in line


def test_tests_name_repository_paths_not_one_machines():
    """Docstrings and comments of the tests point at files in the repository (../shared is not there in CI)."""
    offenders = []
    for path in python_files(ROOT / "tests"):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "/work/" in line or re.search(r"parents\[2\]", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
