"""The package's layout: imports go one way (no cycles), plots.py knows nothing of the program,
and every module imports on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minivae"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path):
    """The minivae modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minivae")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("minivae"):
            for a in node.names:            # `from minivae import data`: the module minivae.data
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found - {module_name(path)}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_no_import_cycle():
    state = {}

    def visit(name, stack):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(stack + [name])
        state[name] = "open"
        for dep in sorted(GRAPH.get(name, ())):
            visit(dep, stack + [name])
        state[name] = "done"

    for name in MODULES:
        visit(name, [])


def test_plots_take_arrays_and_paths_only():
    assert GRAPH["minivae.plots"] <= {"minivae.files"}


def test_the_engine_imports_nothing_of_the_program():
    engine = {"minivae.backend", "minivae.layers", "minivae.conv", "minivae.losses",
              "minivae.optim", "minivae.models", "minivae.gradcheck", "minivae.statcheck"}
    engine |= {m for m in MODULES if m.startswith("minivae.fast")}
    for name in engine & set(MODULES):
        assert GRAPH[name] <= engine | {"minivae"}, (name, GRAPH[name] - engine)


def test_each_module_imports_alone_in_a_fresh_interpreter():
    code = ("import subprocess, sys\n"
            "for m in sys.argv[1:]:\n"
            "    r = subprocess.run([sys.executable, '-c', 'import ' + m], capture_output=True,\n"
            "                       text=True)\n"
            "    if r.returncode:\n"
            "        print(m, r.stderr.strip().splitlines()[-1])\n")
    p = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True,
                       cwd=PACKAGE.parent, timeout=600)
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
