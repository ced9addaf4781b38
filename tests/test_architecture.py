"""The rooms and their one-way arrows, the package list, and the README's promises."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> rooms of ours it may import (besides itself)
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "quant": {"core", "kernels"},
    "eval": {"core"},
    "export": {"core"},
    "calib": {"core"},
    "models": {"core"},
    "integrations": {"core", "kernels"},
    "prune": {"core"},
    "distill": {"core"},
    "recipe": {"core", "prune", "distill", "eval"},  # the passes' config classes and eval task names
    "cli": {"api", "__init__"},
}
ROOM_DIRS = {room: ROOT / "compresskit" / room for room in ALLOWED} | {"cli": ROOT / "cli", "calib": ROOT / "calib"}


def _package_of(path: Path) -> list[str]:
    """Dotted package of a module file, as installed (cli/ and calib/ live inside compresskit)."""
    rel = path.relative_to(ROOT).parent.parts
    return list(rel) if rel and rel[0] == "compresskit" else ["compresskit", *rel]


def _imported_rooms(path: Path, room: str) -> set[str]:
    """Rooms of ours that a module imports (absolute ``compresskit.X`` and relative imports)."""
    rooms = set()
    package = _package_of(path)
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:  # resolve ``from ..x import y`` against the module's own package
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != "compresskit":
                continue
            target = parts[1] if len(parts) > 1 else "__init__"
            if target == "__version__":
                target = "__init__"
            if target != room:
                rooms.add(target)
    return rooms


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_rooms_import_only_what_they_may(room):
    bad = {}
    for path in ROOM_DIRS[room].rglob("*.py"):
        extra = _imported_rooms(path, room) - ALLOWED[room]
        if extra:
            bad[str(path.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"imports across the room's boundary: {bad}"


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {"compresskit"} | {
        "compresskit." + p.parent.relative_to(ROOT / "compresskit").as_posix().replace("/", ".")
        for p in (ROOT / "compresskit").rglob("__init__.py") if p.parent != ROOT / "compresskit"
    } | {"compresskit.cli", "compresskit.calib"}
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    markers = re.findall(r"<!-- (\w[\w-]*) -->\n```bash\n(.+?)\n```", readme)
    assert [m[0] for m in markers] == ["main-command", "test-command"]
    main, test = markers[0][1], markers[1][1]
    assert "pip install torch==2.13.0" in main and "compresskit quantize smollm2-135m" in main
    assert test.index("torch==2.13.0") < test.index("pip install -e") and "pytest" in test
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_no_python_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.glob("**/*.py")
            if ".venv" not in p.parts and (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
