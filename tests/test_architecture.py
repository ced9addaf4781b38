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
    "kvcache": {"core"},
    "recipe": {"core", "eval"},  # the registry (core) gives the passes' config classes; eval its settings
    "cli": {"api", "__init__"},
}

# the API modules, bottom up: each may import the rooms and the API modules before it, never one after it
API_LAYERS = ["api_publish", "api_models", "api_kv", "api_eval", "api_kv_sweep", "api_prune", "api_distill", "api_passes", "api_recipe_plan",
              "runner", "api_recipe", "api"]
OPTIONAL_HEAVY = ("triton_kernels",)  # our modules that import an optional heavy package (triton) at their top
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


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("").parts
    rel = rel if rel[0] == "compresskit" else ("compresskit", *rel)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """Module -> our modules it imports (anywhere in the file), and the imports made inside functions."""
    files = [p for d in ("compresskit", "cli", "calib") for p in (ROOT / d).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    inner: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        in_function = {id(c) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for c in ast.walk(f) if c is not f}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or "" if node.level == 0 else ".".join(
                    package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name and target.startswith("compresskit"):
                    graph[name].add(target)
                    if id(node) in in_function:
                        inner.append((name, target, node.lineno))
    return graph, inner


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_files():
    graph, _ = _import_graph()
    assert not _cycles(graph), "import circles (imports inside functions included): " + str(_cycles(graph))


def test_few_imports_of_our_modules_inside_functions():
    """Imports sit at the top of a file, where the graph is visible; the few inside functions load data
    modules on first use (import compresskit stays light) or an optional heavy package (triton)."""
    _, inner = _import_graph()
    ours = [(m, t, n) for m, t, n in inner if not m.startswith(("compresskit.cli", "compresskit.calib"))
            and not t.endswith(OPTIONAL_HEAVY)]
    assert len(ours) <= 15, ours
    assert not [x for x in inner if x[0].startswith("compresskit.cli")], "cli/ imports at the top of its files"


def test_api_modules_import_only_the_ones_below_them():
    graph, _ = _import_graph()
    bad = {}
    for i, layer in enumerate(API_LAYERS):
        above = {f"compresskit.{m}" for m in API_LAYERS[i + 1:]} | {"compresskit"}
        wrong = graph[f"compresskit.{layer}"] & above
        if wrong:
            bad[layer] = sorted(wrong)
    assert not bad, bad
    unlisted = {m for m in graph if m.count(".") == 1 and m.split(".")[1].startswith("api")} - {
        f"compresskit.{m}" for m in API_LAYERS}
    assert not unlisted, f"add to API_LAYERS: {sorted(unlisted)}"


def test_the_command_line_calls_only_the_api():
    graph, _ = _import_graph()
    cli = {m: deps for m, deps in graph.items() if m.startswith("compresskit.cli")}
    wrong = {m: sorted(d - {"compresskit", "compresskit.api"} - set(cli)) for m, d in cli.items()}
    assert not {m: d for m, d in wrong.items() if d}, wrong


def test_no_method_list_or_isinstance_dispatch_on_configs_outside_the_registry():
    """Methods are found through the registry: no other file lists the quantization methods or asks which
    config class it holds."""
    pattern = re.compile(r"isinstance\([^)]*,\s*\(?\s*(?:OmniQuantConfig|GPTQConfig|CalibratedConfig|PruneConfig|"
                         r"DistillConfig)\b|\(\s*\"rtn\",\s*\"(?:omniquant|gptq)\"")
    hits = [f"{p.relative_to(ROOT)}:{n}" for d in ("compresskit", "cli") for p in (ROOT / d).rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_no_bench_script_shadows_a_package_the_libraries_import():
    """Scripts run by path put bench/ first on sys.path: a bench/kernels.py made transformers' generate()
    import it as the `kernels` package (an ImportError in every generate of bench/quality.py)."""
    probed = {"kernels", "accelerate", "peft", "optimum", "bitsandbytes", "datasets", "safetensors", "triton",
              "torch", "transformers", "tokenizers", "huggingface_hub", "gguf", "numpy", "yaml", "typer", "hqq",
              "gptqmodel", "kvpress", "lm_eval"}
    bench = Path(__file__).resolve().parent.parent / "bench"
    stems = {p.stem for p in bench.glob("*.py")} | {p.name for p in bench.iterdir() if p.is_dir()}
    assert not stems & probed, f"bench/ files named like packages: {sorted(stems & probed)}"
