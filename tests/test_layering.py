"""The layering table of docs/architecture.md, as a check: every module's imports (read with ast, lazy ones inside
functions included, ``if TYPE_CHECKING:`` blocks left out) follow the table, and no two modules import each other,
directly or around a loop.

Why lazy imports count: an import inside a function is how a cycle hides (the add-on once had appearance → panels →
preferences → panels that way); it breaks at runtime exactly when the function first runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"cli": "rerender", "bridge": "rerender.bridge", "backend": "rerender.backend",
         "training": "rerender.training", "addon": "rerender.addon"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
BLENDER = {"bpy", "mathutils", "gpu", "gpu_extras", "bmesh", "addon_utils", "bl_math", "OpenImageIO"}

# part -> the project parts it may import (itself included); docs/architecture.md, "Import namespace"
MAY_IMPORT = {
    "cli": {"cli", "bridge", "backend", "training", "addon"},  # the dispatcher imports each command lazily
    "bridge": {"bridge"},
    "backend": {"backend", "bridge"},
    "training": {"training", "backend", "bridge", "addon"},
    "addon": {"addon", "bridge"},
}
BRIDGE_THIRD_PARTY = {"numpy", "zmq", "msgpack"}
# training modules that drive Blender themselves (everything else reaches bpy through rerender.addon's functions):
TRAINING_BPY = {
    "rerender.training.dataset_builder": "creates and removes the temporary scene the add-on imports into",
    "rerender.training.native_output": "imports bpy quietly (its C-level start-up noise goes to the log)",
    "rerender.training.demo.shot": "builds the demo's Blender shot (the artist's steps, scripted)",
}
TRAINING_BPY_PACKAGES = ("rerender.training.synthetic.",)  # builds and photographs the generated landmark
# docs/architecture.md, "The add-on by layer": group -> its modules, and group -> the other groups it may import
ADDON_GROUPS = {
    "format": {"_bridge", "colmap_checks", "colmap_reader", "cameras"},
    "plumbing": {"connection", "jobs"},
    "ui leaf": {"ui"},
    "settings": {"preferences"},
    "scene data": {"properties", "points", "compat", "exr_io", "exr_read", "deep_buffer", "gpu_raster", "pixels",
                   "semantics", "looks"},
    "blender side": {"colmap_import", "engine", "batch", "viewport"},
    "ui": {"appearance", "photo_match", "panels"},
    "package": {"__init__"},
}
EVERYTHING = set(ADDON_GROUPS)
ADDON_MAY_IMPORT = {
    "format": set(), "plumbing": {"format"}, "ui leaf": {"plumbing"}, "settings": {"plumbing", "ui leaf"},
    "scene data": {"format", "plumbing"}, "blender side": {"format", "plumbing", "settings", "scene data"},
    "ui": EVERYTHING, "package": EVERYTHING,
}
# add-on modules that must import without Blender (training and plain-Python tests use them)
BPY_FREE_ADDON = ("rerender.addon.colmap_checks", "rerender.addon.colmap_reader", "rerender.addon.cameras",
                  "rerender.addon.connection", "rerender.addon.jobs", "rerender.addon._bridge")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PARTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if "vendor" in rel:
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _part(module: str) -> str:
    return "cli" if module.count(".") == 0 or module.split(".")[1] not in PARTS else module.split(".")[1]


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str) -> list[tuple[str, bool, int]]:
    """(imported module, relative?, line) for every import statement of ``module``, lazy ones included."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, False, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found += [(name, bool(node.level), node.lineno) for name in submodules or [target]]
    return found


def project_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (a module's own ancestor packages are not edges: Python loads a
    package before its modules anyway)."""
    edges = {}
    for module in MODULES:
        targets = set()
        for name, _, _ in imports_of(module):
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        edges[module] = targets
    return edges


def test_the_scan_sees_the_whole_tree():
    assert len(MODULES) > 80
    assert {"rerender.addon.colmap_reader", "rerender.bridge.cameras", "rerender.addon.jobs"} <= MODULES.keys()


def test_parts_import_only_what_the_table_allows():
    wrong = []
    for module, targets in project_edges().items():
        part = _part(module)
        for target in targets:
            if _part(target) not in MAY_IMPORT[part]:
                wrong.append(f"{module} imports {target} ({part} may import {sorted(MAY_IMPORT[part])})")
    assert not wrong, "\n".join(wrong)


def test_third_party_imports_follow_the_table():
    wrong = []
    for module in MODULES:
        part = _part(module)
        for name, relative, line in imports_of(module):
            top = name.split(".")[0]
            where = f"{MODULES[module].relative_to(ROOT)}:{line}"
            if relative or top == "rerender" or top in STDLIB:
                if part == "bridge" and not relative and top == "rerender":
                    wrong.append(f"{where}: the bridge imports {name} absolutely (it is vendored: relative only)")
                continue
            if part == "bridge" and top not in BRIDGE_THIRD_PARTY:
                wrong.append(f"{where}: the bridge imports {top} (only numpy, pyzmq, msgpack)")
            if part in ("bridge", "backend") and top in BLENDER:
                wrong.append(f"{where}: {part} imports {top} (never Blender)")
            if part in ("bridge", "addon") and top == "torch":
                wrong.append(f"{where}: {part} imports torch (never)")
            if part == "training" and top in BLENDER and module not in TRAINING_BPY \
                    and not module.startswith(TRAINING_BPY_PACKAGES):
                wrong.append(f"{where}: training drives Blender only through rerender.addon, not {top}")
    assert not wrong, "\n".join(wrong)


def test_the_addon_reaches_the_bridge_only_through_its_one_door():
    wrong = [f"{module}: {name}" for module in MODULES if _part(module) == "addon" and module != "rerender.addon._bridge"
             for name, relative, _ in imports_of(module) if not relative and name.startswith("rerender")]
    assert not wrong, "add-on modules import rerender.* absolutely (use relative imports and ._bridge):\n" + \
        "\n".join(wrong)


def _addon_group(module: str) -> str | None:
    name = "__init__" if module == "rerender.addon" else module.rpartition(".")[2]
    return next((group for group, names in ADDON_GROUPS.items() if name in names), None)


def test_addon_modules_follow_the_layer_table():
    wrong = []
    for module, targets in project_edges().items():
        if _part(module) != "addon":
            continue
        group = _addon_group(module)
        if group is None:
            wrong.append(f"{module} is in no group of the add-on's layer table (docs/architecture.md): add it there "
                         "and to ADDON_GROUPS")
            continue
        for target in targets:
            other = _addon_group(target)
            if _part(target) == "addon" and other not in ADDON_MAY_IMPORT[group] | {group, None}:
                wrong.append(f"{module} ({group}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds
    cycles = _cycles(project_edges())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", BPY_FREE_ADDON)
def test_bpy_free_addon_modules_import_without_blender(module):
    code = ("import sys\n"
            "for name in ('bpy', 'mathutils', 'gpu', 'gpu_extras', 'torch'):\n"
            "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
            f"import {module}\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_code_references_resolve_inside_the_repository():
    """Docstrings and comments point at docs/*.md (and docs/design.md §N), never at issue numbers or a DESIGN file
    a clone of the repository does not have."""
    import re

    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "design.md").read_text(), re.M))
    files = [path for folder in (*PARTS, "tests", "benchmarks", "packaging") for path in (ROOT / folder).rglob("*.py")
             if "vendor" not in path.parts]
    wrong = []
    for path in files:
        text = path.read_text()
        where = path.relative_to(ROOT)
        for match in re.finditer(r"DESIGN(?:\.md)? §\d|\bissue #?\d", text):
            wrong.append(f"{where}:{text.count(chr(10), 0, match.start()) + 1}: {match.group()!r} does not resolve")
        for doc, section in re.findall(r"docs/([\w-]+\.md)(?: §(\d+))?", text):
            if not (ROOT / "docs" / doc).is_file():
                wrong.append(f"{where}: docs/{doc} does not exist")
            elif section and doc == "design.md" and section not in sections:
                wrong.append(f"{where}: docs/design.md has no section {section}")
    assert len(files) > 150 and sections
    assert not wrong, "\n".join(wrong)
