"""requirements.txt pins what the code imports, and nothing it does not."""
from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for folder in ("pipeline", "scripts", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    return modules


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_pinned_package_is_imported_or_says_why_not():
    provides: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            provides.setdefault(_normalise(distribution), set()).add(module)
    imported = _imported_top_level_modules()
    unused = []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if not requirement or "not imported:" in line:
            continue
        name = _normalise(re.split(r"[=<>~!\[ ]", requirement)[0])
        if not provides.get(name, set()) & imported:
            unused.append(name)
    assert not unused, f"pinned but imported nowhere: {unused}"
