"""The layers of lib and its import graph: ``python -m lib.kit.imports`` prints module -> the lib modules it imports.

Layers, lowest first (lib/README.md says what each owns). A module may import lib modules of its own layer or of
a lower one, never of a higher one, and only at the top of the file (an import inside a function would hide a
cycle); the graph has no cycle. tests/lib/test_layers.py holds lib to these rules.

    python -m lib.kit.imports            # module -> imports, one line each, then the layer of every module
    python -m lib.kit.imports --check    # exit 1 and name every rule broken
"""

from __future__ import annotations

import argparse
import sys

from lib.code import graph, lib_imports, modules

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("lib", "lib.files", "lib.cli", "lib.progress", "lib.code")),
    ("paper", ("lib.paper",)),
    ("algorithm", ("lib.assignment", "lib.couplings", "lib.boundary", "lib.flow", "lib.solvers", "lib.metrics")),
    ("networks", ("lib.models", "lib.unet", "lib.autoencoder")),
    ("data", ("lib.datasets", "lib.shards", "lib.toy")),
    ("checkpoints", ("lib.checkpoints", "lib.fabricate")),
    ("training", ("lib.train", "lib.pairing", "lib.runfolder", "lib.distributed", "lib.livelog")),
    ("inference", ("lib.sample", "lib.evaluate", "lib.fid")),
    ("experiments", ("lib.experiments",)),
    ("kit", ("lib.kit",)),
)


def layer_of(module: str) -> int:
    """Index into LAYERS of a module (a package entry covers its submodules); unknown modules raise KeyError."""
    for index, (_, members) in enumerate(LAYERS):
        if any(module == m or (m != "lib" and module.startswith(m + ".")) for m in members):
            return index
    raise KeyError(f"{module} belongs to no layer: add it to lib.kit.imports.LAYERS and lib/README.md")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the list of modules around it (depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                found.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def violations() -> list[str]:
    """Every broken rule, one line each: upward imports, imports inside functions, cycles, modules in no layer."""
    problems = []
    known = modules()
    for name, path in known.items():
        top, nested = lib_imports(path, known)
        problems += [f"{name} imports {m} inside a function or class" for m in sorted(nested - {name})]
        try:
            mine = layer_of(name)
        except KeyError as err:
            problems.append(str(err.args[0]))
            continue
        for target in sorted((top | nested) - {name, "lib"}):
            if layer_of(target) > mine:
                problems.append(
                    f"{name} ({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]}), a higher layer"
                )
    problems += ["import cycle: " + " -> ".join(c) for c in cycles(graph())]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lib.kit.imports", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--check", action="store_true", help="only check the rules; exit 1 naming what is broken")
    args = p.parse_args(argv)
    problems = violations()
    if not args.check:
        for name, targets in sorted(graph().items(), key=lambda item: (layer_of(item[0]), item[0])):
            print(f"{LAYERS[layer_of(name)][0]:11s} {name:32s} -> {', '.join(sorted(targets)) or '-'}")
    print(
        "\n".join(problems) if problems else "layers respected, no import inside a function, no cycle",
        file=sys.stderr if problems else sys.stdout,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
