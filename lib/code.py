"""lib's own code as data: its modules, the lib modules each imports, and a digest of the code a run executes.

A training run is reused only by the code that made it. "The code" is what the run executes, not all of lib: the
lib modules its entry point imports, directly or through each other, read from their files (so editing a figure, a
notebook summary or the kit's papermill machinery reuses every run, and editing the coupling or the training step
trains afresh). An entry may also name one function of a module, ``"lib.experiments.study:run_study"``: then only
that module's top-level definitions the function reaches by name count from its own file (the analysis beside it
does not), together with every lib module the file imports.

lib.kit.imports checks the layers on the same graph.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

LIB = Path(__file__).resolve().parent


def module_name(path: Path, lib: Path = LIB) -> str:
    """lib/kit/tables.py -> lib.kit.tables; lib/__init__.py -> lib."""
    parts = path.relative_to(lib.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(lib: Path = LIB) -> dict[str, Path]:
    """Every module of the lib package at ``lib`` -> its file."""
    return {module_name(p, lib): p for p in sorted(lib.rglob("*.py"))}


def lib_imports(path: Path, known: Iterable[str]) -> tuple[set[str], set[str]]:
    """(lib modules imported at module level, lib modules imported inside functions or classes) of one file.

    ``from lib import x`` counts as importing lib.x when that is one of the ``known`` modules, else lib itself.
    """
    known = set(known)
    top: set[str] = set()
    nested: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name == "lib" or a.name.startswith("lib.")]
        elif isinstance(node, ast.ImportFrom) and node.module and (node.module.split(".")[0] == "lib"):
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        if names:
            (top if node in tree.body else nested).update(names)
    return top, nested


def graph(lib: Path = LIB) -> dict[str, set[str]]:
    """module -> the lib modules it imports (anywhere in the file)."""
    files = modules(lib)
    out = {}
    for name, path in files.items():
        top, nested = lib_imports(path, files)
        out[name] = (top | nested) - {name}
    return out


def closure(entries: Iterable[str], lib: Path = LIB) -> set[str]:
    """The modules ``entries`` import, directly or through each other, the entries included."""
    edges = graph(lib)
    unknown = [e for e in entries if e not in edges]
    if unknown:
        raise KeyError(f"no module {', '.join(unknown)} in {lib}")
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += edges[module]
    return seen


def reached_definitions(source: str, function: str) -> str:
    """The top-level statements of a module's ``source`` that ``function`` reaches by name (itself, the functions,
    classes and constants it names, and theirs), in file order, as source text."""
    tree = ast.parse(source)
    defined: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update({t.id: node for t in targets if isinstance(t, ast.Name)})
    if function not in defined:
        raise KeyError(f"no top-level definition {function!r}")
    reached: set[str] = set()
    todo = [function]
    while todo:
        name = todo.pop()
        if name in reached or name not in defined:
            continue
        reached.add(name)
        todo += [n.id for n in ast.walk(defined[name]) if isinstance(n, ast.Name)]
    kept = sorted({id(defined[n]): defined[n] for n in reached}.values(), key=lambda n: n.lineno)
    return "\n".join(ast.get_source_segment(source, node) or "" for node in kept)


def code_digest(entries: Iterable[str], lib: Path = LIB) -> str:
    """A digest of the code that runs from ``entries`` (module names, or ``module:function``) -> 64 hex digits.

    Each module in the import closure counts as its whole file, except a ``module:function`` entry's own module,
    which counts only the definitions the function reaches (:func:`reached_definitions`).
    """
    entries = list(entries)
    functions = dict(e.split(":", 1) for e in entries if ":" in e)
    files = modules(lib)
    digest = hashlib.sha256()
    for module in sorted(closure([e.split(":", 1)[0] for e in entries], lib)):
        text = files[module].read_text()
        if module in functions:
            text = reached_definitions(text, functions[module])
        digest.update(module.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()
