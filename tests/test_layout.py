"""The package's layout: imports go one way (no cycles), plots.py knows nothing of the program,
and every module imports on its own in a fresh interpreter."""

import ast
import re
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
              "minivae.optim", "minivae.models", "minivae.tiers", "minivae.gradcheck",
              "minivae.statcheck"}
    engine |= {m for m in MODULES if m.startswith(("minivae.fast", "minivae.gpu"))}
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


README = PACKAGE.parent / "README.md"


def reading_order():
    """The package's files in the order README's two reading guides list them: the paths named
    in bold under "Reading the engine" and "Reading the program" (a folder names every module in
    it; a bare file name continues the folder of the path before it)."""
    text = README.read_text()
    start = text.index("## Reading the engine")
    end = text.index("Everything that compares with PyTorch", start)
    order, folder = [], "minivae"
    for name in re.findall(r"\*\*`([^`]+)`\*\*", text[start:end]):
        name = name.rstrip("/")
        if "/" in name:
            folder, name = name.rsplit("/", 1) if name.endswith(".py") else (name, "")
        path = PACKAGE.parent / folder / name
        if name == "":
            files = sorted(path.glob("*.py"))
        else:
            files = [path]
        for f in files:
            assert f.is_file(), f"README lists {f.relative_to(PACKAGE.parent)}, which is missing"
            order.append(module_name(f))
    return order


def test_the_reading_guides_list_every_module_after_what_it_imports():
    order = reading_order()
    assert len(order) == len(set(order)), "a module is listed twice"
    assert set(order) == set(MODULES), set(MODULES) ^ set(order)
    seen = set()
    for name in order:
        # a subpackage's __init__ (its map) may name its modules, listed beside it
        package = {m for m in MODULES if m.startswith(name + ".")}
        early = GRAPH[name] - seen - package - {"minivae"}
        assert not early, f"README lists {name} before {sorted(early)}, which it imports"
        seen.add(name)


def test_the_plain_tier_imports_no_other_tier():
    plain = ["minivae.backend", "minivae.conv", "minivae.layers", "minivae.losses",
             "minivae.optim", "minivae.models"]
    assert reading_order()[:6] == plain
    for name in plain:
        assert GRAPH[name] <= set(plain), (name, GRAPH[name] - set(plain))
