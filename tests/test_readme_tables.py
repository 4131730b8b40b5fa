"""The README's model and adapter tables say what the repository holds: every
model folder with its task and adapter, every built-in adapter with its tasks."""

from __future__ import annotations

import importlib

from adapters.loading import ADAPTERS
from adapters.manifest import load_manifest
from serving.settings import REPO_ROOT


def section(heading: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme.count(heading + "\n") == 1, heading
    level = heading.split(" ", 1)[0]
    return readme.split(heading + "\n", 1)[1].split(f"\n{level} ", 1)[0]


def table(text: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the Markdown table in ``text`` whose header starts with ``first_column``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def code(cell: str) -> str:
    """The cell's value without its backticks and any note after it: "`digits` (custom)" -> "digits"."""
    return cell.split(" (", 1)[0].strip("`")


def test_the_model_table_is_the_model_repository():
    rows = table(section("## Models served by default"), "name")
    in_readme = {code(row["name"]): (code(row["task"]), code(row["adapter"])) for row in rows}
    assert len(in_readme) == len(rows), "a model is listed twice"
    in_repository = {}
    for path in sorted((REPO_ROOT / "models").glob("*/model.yaml")):
        manifest = load_manifest(path.parent)
        in_repository[manifest.name] = (manifest.task, manifest.adapter)
    assert len(in_repository) >= 10
    assert in_readme == in_repository


def test_the_adapter_table_is_the_adapter_registry():
    rows = table(section("### Other adapters and tasks"), "adapter")
    in_readme = {code(row["adapter"]): tuple(task.strip() for task in row["tasks"].split(",")) for row in rows}
    assert len(in_readme) == len(rows), "an adapter is listed twice"
    registered = {}
    for name, spec in ADAPTERS.items():
        module, cls = spec.split(":")
        registered[name] = getattr(importlib.import_module(module), cls).served_tasks()
    assert set(in_readme) == set(registered)
    assert {name: set(tasks) for name, tasks in in_readme.items()} == {
        name: set(tasks) for name, tasks in registered.items()}
