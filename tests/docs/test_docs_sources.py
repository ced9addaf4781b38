"""The generated parts of the documentation site, checked without mkdocs (the hooks are plain Python).

`mkdocs build --strict` itself runs in .ci/run, after the test command; these tests pin what the hooks
produce: the README's commands and the bench tables come in verbatim, the CLI reference has every
command and option of the app, and the API page covers ``compresskit.__all__``.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


includes = _hook("includes")
cli_reference = _hook("cli_reference")


def test_readme_blocks_are_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    for name in ("main-command", "test-command"):
        block = includes.readme_block(readme, name)
        assert block.startswith("```bash\n") and block.endswith("\n```")
        assert block.splitlines()[1] in readme
    assert "python -m pytest" in includes.readme_block(readme, "test-command")
    with pytest.raises(includes.IncludeError):
        includes.readme_block(readme, "no-such-command")


def test_every_include_marker_in_the_docs_resolves():
    pages = [p for p in DOCS.rglob("*.md") if "hooks" not in p.parts]
    markers = 0
    for page in pages:
        text = page.read_text()
        markers += len(includes.MARKER.findall(text))
        expanded = includes.expand(text, ROOT)
        assert not includes.MARKER.search(expanded), page
    assert markers >= 7  # the README's two commands and the bench tables of the concepts page


def _table_shapes(text: str) -> list[tuple[int, int]]:
    """(header cells, delimiter cells) of every markdown table (a table whose counts differ does not
    render: it shows as a paragraph of pipes)."""
    lines = text.splitlines()
    delimiter = re.compile(r"\|(?:\s*:?-+:?\s*\|)+")
    return [(lines[i - 1].strip().strip("|").count("|") + 1, line.strip().strip("|").count("|") + 1)
            for i, line in enumerate(lines) if i and delimiter.fullmatch(line.strip())]


def test_every_table_of_the_docs_and_the_included_results_renders():
    pages = [p for p in DOCS.rglob("*.md") if "hooks" not in p.parts]
    for page in pages:
        for header, delimiter in _table_shapes(includes.expand(page.read_text(), ROOT)):
            assert header == delimiter, f"{page.name}: a table with {header} header cells and {delimiter} delimiters"


def test_include_copies_the_file_and_shifts_headings(tmp_path):
    (tmp_path / "r.md").write_text("# Title\n\n| a |\n|---|\n| 1 |\n\n## Sub\n")
    out = includes.expand("before\n<!-- include: r.md shift=2 -->\nafter\n", tmp_path)
    assert out == "before\n### Title\n\n| a |\n|---|\n| 1 |\n\n#### Sub\nafter\n"
    concepts = includes.expand((DOCS / "concepts.md").read_text(), ROOT)
    assert (ROOT / "bench" / "results" / "quality.md").read_text().strip() in concepts
    for bad in ("<!-- include: no/such/file.md -->", "<!-- include: ../../etc/passwd -->",
                "<!-- include: r.md level=2 -->"):
        with pytest.raises(includes.IncludeError):
            includes.expand(bad, tmp_path)


def test_optional_nav_pages_are_dropped_only_while_missing(tmp_path):
    nav = [{"Home": "index.md"}, {"Guides": [{"Recipes": "recipes.md"}, {"Kernels": "kernels.md"}]}]
    assert includes.drop_missing_optional(nav, tmp_path) == [{"Home": "index.md"}, {"Guides": [{"Kernels": "kernels.md"}]}]
    (tmp_path / "recipes.md").write_text("# Recipes\n")
    assert includes.drop_missing_optional(nav, tmp_path) == nav
    assert includes.drop_missing_optional([{"Typo": "kernel.md"}], tmp_path) == [{"Typo": "kernel.md"}]


def test_cli_reference_has_every_command_and_option():
    import click
    import typer

    from compresskit.cli.main import app

    text = cli_reference.render(app)
    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="compresskit")
    names = root.list_commands(ctx)
    assert {"quantize", "prune", "distill", "eval", "info", "kernels", "export", "push"} <= set(names)
    for name in names:
        cmd = root.get_command(ctx, name)
        assert f"## `compresskit {name}` {{ #{name} }}" in text
        for param in cmd.params:
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("-"):
                    assert re.search(rf"<code>[^<]*{re.escape(opt)}\b", text), (name, opt)
    assert "\\[default: 128\\]" in text and "longbench:&lt;dataset&gt;" in text


def test_cli_reference_picks_up_new_commands_and_groups():
    import typer

    app = typer.Typer()

    @app.command()
    def hello(name: str, loud: bool = False) -> None:
        """Say hello."""

    sub = typer.Typer(help="A group.")

    @sub.command("list")
    def list_(pattern: str = "*") -> None:
        """List things | with a pipe."""

    app.add_typer(sub, name="things")
    text = cli_reference.render(app, prog="demo")
    assert "## `demo hello` { #hello }" in text and "<code>--loud / --no-loud</code>" in text
    assert "## `demo things list` { #things-list }" in text and "List things \\| with a pipe." in text


def test_api_page_documents_the_public_names_and_configs():
    import compresskit

    page = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: compresskit\.(\w+)$", page, re.MULTILINE))
    public = set(compresskit.__all__) - {"__version__"}
    assert public <= documented, f"add to docs/api.md: {sorted(public - documented)}"
    assert "::: compresskit.GPTQConfig" in page  # (it moved next to its method: compresskit.quant.gptq)
