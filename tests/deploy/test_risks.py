"""deploy/RISKS.md names, for every risk, the tests that prove its control works: each of
them must exist, so the paper trail cannot silently go stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.deploy.conftest import DEPLOY, REPO

RISKS = DEPLOY / "RISKS.md"
REF_RE = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")


def defined_tests(path: Path) -> set[str]:
    """`name` for module-level test functions and `Class::name` for test methods."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return {n for n in names if n.split("::")[-1].startswith("test")}


def missing_references(text: str, root: Path) -> list[str]:
    """Every `tests/…py::name` reference in ``text`` that names no test under ``root``."""
    missing = []
    cache: dict[str, set[str]] = {}
    for file, name in REF_RE.findall(text):
        path = root / file
        if not path.is_file():
            missing.append(f"{file}::{name} (no such file)")
            continue
        if file not in cache:
            cache[file] = defined_tests(path)
        if name not in cache[file]:
            missing.append(f"{file}::{name} (no such test)")
    return missing


def test_every_referenced_test_exists() -> None:
    text = RISKS.read_text()
    assert len(REF_RE.findall(text)) >= 20  # the pattern still finds the references
    assert missing_references(text, REPO) == []


def test_every_risk_names_a_control_and_a_test() -> None:
    rows = [line for line in RISKS.read_text().splitlines() if re.match(r"\|\s*R\d+\s*\|", line)]
    assert len(rows) >= 20
    ids = [line.split("|")[1].strip() for line in rows]
    assert len(set(ids)) == len(ids), "risk ids are unique"
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4 and all(cells), f"risk | control | proof, all filled: {line}"
        assert REF_RE.search(cells[3]), f"{cells[0]}: no test named as proof"


def test_a_stale_reference_is_caught() -> None:
    text = (
        "`tests/deploy/test_risks.py::test_every_referenced_test_exists` "
        "`tests/deploy/test_risks.py::test_renamed_long_ago` "
        "`tests/deploy/test_nothing.py::test_x`"
    )
    assert missing_references(text, REPO) == [
        "tests/deploy/test_risks.py::test_renamed_long_ago (no such test)",
        "tests/deploy/test_nothing.py::test_x (no such file)",
    ]
