"""The package layout: dependencies point one way (issue 12, item 4).

Read from the source with `ast` (nothing is imported): ``renderer/`` never imports ``mvf``;
inference (``mvf/net``, ``mvf/recon``) never imports ``mvf.train``; no import cycle among the
module-level imports of ``mvf`` and ``renderer``; ``mvf/`` has at most 12 modules at its top
level; no function-level import of an ``mvf``/``renderer`` module.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mvf", "renderer")
MAX_TOP_LEVEL_MODULES = 12
# Internal modules that may be imported inside a function because they load a heavy optional
# dependency (mediapipe, RAFT weights) at import time. Keep this list short.
LAZY_ALLOWED: tuple[str, ...] = ()


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (``from a import b`` gives ``a.b`` when that is a module)
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import statement of the module (module level and inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(name, a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, name, path.name == "__init__.py")
                found.append(Import(name, base, child.lineno, in_function))
                found.extend(Import(name, f"{base}.{a.name}", child.lineno, in_function)
                             for a in child.names if f"{base}.{a.name}" in modules)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def _internal(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def _where(imp: Import) -> str:
    return f"{imp.source}:{imp.line} imports {imp.target}"


def test_renderer_imports_nothing_from_mvf():
    bad = [_where(i) for i in all_imports() if i.source.split(".")[0] == "renderer"
           and i.target.split(".")[0] == "mvf"]
    assert not bad, "renderer/ must not import mvf:\n" + "\n".join(bad)


def test_inference_does_not_import_training():
    inference = ("mvf.net", "mvf.recon")
    bad = [_where(i) for i in all_imports()
           if i.source.startswith(inference) and (i.target == "mvf.train" or i.target.startswith("mvf.train."))]
    assert not bad, "mvf/net and mvf/recon must not import mvf.train:\n" + "\n".join(bad)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of a directed graph found by depth-first search, each as ``[a, b, ..., a]``."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


def test_no_module_level_import_cycles():
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for i in all_imports():
        if not i.in_function and i.target in modules and i.target != i.source:
            graph.setdefault(i.source, set()).add(i.target)
    cycles = find_cycles(graph)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_mvf_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "mvf").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"mvf/ has {len(top)} top-level modules: {top}"


def test_no_function_level_internal_imports():
    bad = [_where(i) for i in all_imports() if i.in_function and _internal(i.target)
           and not any(i.target == m or i.target.startswith(m + ".") for m in LAZY_ALLOWED)]
    assert not bad, "imports inside functions (move them to the top of the module):\n" + "\n".join(sorted(set(bad)))


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: function-level and relative imports are read, cycles are found."""
    src = tmp_path / "mod.py"
    src.write_text("from . import sibling\n\ndef f():\n    from mvf.train import loop\n")
    found = imports_of("renderer.mod", src, {"renderer.sibling": src, "mvf.train.loop": src})
    assert Import("renderer.mod", "renderer.sibling", 1, False) in found
    assert Import("renderer.mod", "mvf.train.loop", 4, True) in found
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
