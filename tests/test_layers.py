"""Layers that point one way: every import of the package against the layer table of
docs/architecture.md, the one place the layer order is written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dave_lightning"
ROW = re.compile(r"^\| (\d+) [^|]* \| ([^|]+) \|")


def layer_table() -> dict[str, int]:
    """Module or folder (relative to the package, folders ending in '/') → its layer."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            for unit in re.findall(r"`([^`]+)`", match[2]):
                layers[unit] = int(match[1])
    return layers


def unit_of(module: str, layers: dict[str, int]) -> str:
    """The table's unit (``core/``, ``callback.py``) of a dotted module name."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__.py"
    if f"{parts[0]}/" in layers:
        return f"{parts[0]}/"
    return f"{parts[0]}.py"


def package_imports(path: Path) -> set[str]:
    """The dave_lightning modules a file imports, at any depth (function-level imports too);
    ``from dave_lightning import viz`` imports ``dave_lightning.viz``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("dave_lightning"):
                found.update(_imported(node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dave_lightning"))
    strings = re.findall(r'"(dave_lightning(?:\.\w+)+)"', path.read_text())  # lazy exports
    return found | set(strings)


def _imported(module: str, name: str) -> str:
    """``module.name`` when that is a module or package of the package, else ``module``."""
    candidate = ROOT.joinpath(*f"{module}.{name}".split("."))
    is_module = candidate.with_suffix(".py").exists() or candidate.is_dir()
    return f"{module}.{name}" if is_module else module


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_every_module_is_in_the_layer_table() -> None:
    layers = layer_table()
    units = {unit_of(module_name(p), layers) for p in PACKAGE.rglob("*.py")}
    assert units <= set(layers), f"not in docs/architecture.md's layers: {units - set(layers)}"
    assert set(layers) <= units, f"listed but not in the package: {set(layers) - units}"


def test_no_module_imports_from_a_higher_layer() -> None:
    layers = layer_table()
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(module_name(path), layers)
        for imported in package_imports(path):
            other = unit_of(imported, layers)
            if layers[other] > layers[unit]:
                upward.append(f"{path.relative_to(ROOT)} ({unit}) imports {imported} ({other})")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_no_two_units_import_each_other() -> None:
    layers = layer_table()
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = unit_of(module_name(path), layers)
        for imported in package_imports(path):
            other = unit_of(imported, layers)
            if other != unit:
                edges.setdefault(unit, set()).add(other)
    cycles = sorted(
        f"{a} ⇄ {b}" for a, targets in edges.items() for b in targets if a in edges.get(b, set())
    )
    assert not cycles, f"units that import each other: {cycles}"


def test_the_check_sees_a_planted_upward_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("from dave_lightning.callback import DAVEMonitor\n")
    layers = layer_table()
    imported = package_imports(planted)
    assert "dave_lightning.callback" in imported
    assert layers[unit_of("dave_lightning.callback", layers)] > layers["core/"]
