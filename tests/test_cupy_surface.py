"""The engine's CuPy surface, checked without a GPU.

The engine runs on NumPy and CuPy through one code path (`xp = array_module(x)`), but CuPy is
not all of NumPy: a function, an ndarray method or a keyword that NumPy has and CuPy lacks breaks
`--backend cupy` only on a GPU machine. This test reads the package's source with `ast` and checks
every name it reaches through an array module against CuPy's namespace, which imports (and can be
inspected) on a machine without a GPU:

* `xp.<name>` and longer chains (`xp.linalg.norm`, `self.xp.random.default_rng`): the name must
  exist in CuPy (`cupy.linalg.norm`), and the keywords a call passes must be ones CuPy's function
  takes (where its signature can be read: inspect, or the first line of its docstring).
* array methods, found heuristically: every attribute name the source uses that is an attribute of
  numpy.ndarray (`.reshape`, `.sum`, `.astype`, `.T`, ...), whatever it is called on, must be one
  of cupy.ndarray too; and a keyword passed to such a method that NumPy's method takes must be one
  CuPy's takes (`x.sum(where=...)` is NumPy-only). A keyword NumPy's method rejects marks a call
  on something else (a list's `sort(key=...)`) and is not checked.

It walks every .py file under minivae/ (sub-packages such as minivae/fast/ included), so code
moved between files stays covered. A module whose docstring says it is "NumPy-only" is left out:
that is how a fast-tier module that never runs on CuPy says so.
"""

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minivae"
NUMPY_ONLY = re.compile(r"\bnumpy[- ]only\b", re.IGNORECASE)
ARRAY_MODULE_NAMES = {"xp"}          # the name the engine gives its array module
HOST_MODULE_NAMES = {"np", "numpy"}  # np.<name> is NumPy on the host, never an array method
                                     # (so are names bound by a file's imports)
NDARRAY_ATTRS = {n for n in dir(np.ndarray) if not n.startswith("__")}


class Use(NamedTuple):
    """One reach into the array module (kind 'module', path ('linalg', 'norm')) or one array
    method/attribute (kind 'method', path ('sum',)), with the keywords a call passes."""
    where: str
    kind: str
    path: tuple
    keywords: tuple


def _module_chain(node):
    """('linalg', 'norm') for xp.linalg.norm / self.xp.linalg.norm; None if not rooted at xp."""
    names = []
    while isinstance(node, ast.Attribute):
        if node.attr in ARRAY_MODULE_NAMES:          # self.xp, model.xp
            return tuple(reversed(names))
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ARRAY_MODULE_NAMES:
        return tuple(reversed(names))
    return None


def array_uses(source, filename="<string>"):
    """Every Use in `source`: reaches into the array module and possible ndarray attributes."""
    tree = ast.parse(source, filename)
    modules = HOST_MODULE_NAMES | _imported_names(tree)    # json.dumps is no ndarray.dumps
    called = {}                                      # id(Attribute) -> its Call's keywords
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            called[id(node.func)] = tuple(k.arg for k in node.keywords if k.arg is not None)
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        where, keywords = f"{filename}:{node.lineno}", called.get(id(node), ())
        chain = _module_chain(node)
        if chain is not None:
            if chain and not any(n.startswith("__") for n in chain):
                uses.append(Use(where, "module", chain, keywords))
            continue
        base = node.value
        on_module = (isinstance(base, ast.Name) and base.id in modules
                     or _module_chain(base) is not None)
        if node.attr in NDARRAY_ATTRS and not on_module:
            uses.append(Use(where, "method", (node.attr,), keywords))
    return uses


def _imported_names(tree):
    """The names a module's import statements bind (modules, or names taken from them)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def keywords_of(obj):
    """The keyword names callable `obj` takes, or None when it takes any (**kwargs) or its
    signature cannot be read (from inspect, else a docstring's first line `name(a, b=1, ...)`)."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return _keywords_from_doc(getattr(obj, "__doc__", None) or "")
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _keywords_from_doc(doc):
    lines = doc.strip().splitlines()
    match = re.match(r"[\w.]+\((.*)\)(\s*->.*)?$", lines[0].strip()) if lines else None
    if match is None:
        return None
    text = match.group(1).replace("[", "").replace("]", "").replace("\\*", "*")
    parts, depth, current = [], 0, ""
    for ch in text:                                  # split at top-level commas
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    names = set()
    for part in (p.strip() for p in parts):
        if part.startswith("**"):
            return None
        if part == "/":                              # everything before it is positional-only
            names = set()
        elif part and not part.startswith("*"):
            name = part.split("=")[0].split(":")[0].split()[-1]
            if name != "self":
                names.add(name)
    return names


def surface_problems(uses, module, ndarray, reference=np.ndarray):
    """One line per use that `module` / its `ndarray` class cannot serve."""
    problems = set()
    for use in uses:
        if use.kind == "module":
            target = module
            for name in use.path:
                if not hasattr(target, name):
                    target = None
                    break
                target = getattr(target, name)
            label = f"{module.__name__}.{'.'.join(use.path)}"
            if target is None:
                problems.add(f"{use.where}: {label} does not exist")
                continue
            accepted = keywords_of(target) if use.keywords else None
        else:
            name = use.path[0]
            label = f"{ndarray.__name__}.{name}"
            if not hasattr(ndarray, name):
                problems.add(f"{use.where}: {label} does not exist")
                continue
            if not use.keywords or not callable(getattr(ndarray, name)):
                continue
            accepted = keywords_of(getattr(ndarray, name))
            numpy_accepts = keywords_of(getattr(reference, name))
            if numpy_accepts is not None and not set(use.keywords) <= numpy_accepts:
                continue                             # not NumPy's method either: not an array
        if accepted is not None:
            for kw in use.keywords:
                if kw not in accepted:
                    problems.add(f"{use.where}: {label} takes no keyword {kw!r}")
    return sorted(problems)


def engine_sources():
    """(relative path, source) of every .py under minivae/ that is not declared NumPy-only."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or ""
        if not NUMPY_ONLY.search(doc):
            out.append((str(path.relative_to(PACKAGE.parent)), source))
    return out


# --------------------------------------------------------------------------------------------
# The walker itself, against NumPy (runs everywhere)

SAMPLE = '''
import json
import numpy as np

def f(x, layer):
    xp = array_module(x)
    y = xp.tanh(x) + xp.linalg.norm(x) + layer.xp.exp(x)
    z = xp.not_a_cupy_function(y)
    w = xp.sum(y, axis=0, bogus=1)
    names = ["b", "a"]
    names.sort(key=len)               # a list's sort: NumPy's sort takes no `key` either
    v = np.dtype(np.float32)          # the host's NumPy, not an array's .dtype
    s = json.dumps(v)                 # a module's function, not ndarray.dumps
    return y.reshape(2, -1).T, x.sum(where=y > 0), x.resize(3), xp.__name__, layer.not_an_array
'''


def test_the_walker_finds_module_chains_methods_and_keywords():
    uses = array_uses(SAMPLE, "sample.py")
    module = {u.path for u in uses if u.kind == "module"}
    assert module == {("tanh",), ("linalg",), ("linalg", "norm"), ("exp",),
                      ("not_a_cupy_function",), ("sum",)}
    methods = {u.path[0]: u.keywords for u in uses if u.kind == "method"}
    assert methods == {"reshape": (), "T": (), "sum": ("where",), "resize": (), "sort": ("key",)}
    assert ("axis", "bogus") in {u.keywords for u in uses if u.path == ("sum",)}


def test_the_check_fails_on_a_missing_function_method_or_keyword():
    class PickyArray:
        """An ndarray class without resize, whose sum takes no `where` (as CuPy's)."""
        T = reshape = None

        def sort(self, axis=-1):
            pass

        def sum(self, axis=None, dtype=None, out=None, keepdims=False):
            pass

    problems = surface_problems(array_uses(SAMPLE, "sample.py"), np, PickyArray)
    assert problems == [
        "sample.py:14: PickyArray.resize does not exist",
        "sample.py:14: PickyArray.sum takes no keyword 'where'",
        "sample.py:8: numpy.not_a_cupy_function does not exist",
        "sample.py:9: numpy.sum takes no keyword 'bogus'",
    ]
    clean = "def g(x):\n    xp = array_module(x)\n    return xp.exp(x).reshape(-1).sum(axis=0)\n"
    assert surface_problems(array_uses(clean), np, np.ndarray) == []


def test_signatures_are_read_from_docstrings():
    assert _keywords_from_doc("exp(x, /, out=None, \\*, casting='same_kind', dtype=None)") == \
        {"out", "casting", "dtype"}
    assert _keywords_from_doc("_ndarray_base.dot(self, _ndarray_base b, _ndarray_base out=None)"
                              " -> _ndarray_base") == {"b", "out"}
    assert _keywords_from_doc("f(x[, signature])") == {"x", "signature"}
    assert _keywords_from_doc("einsum(*operands, **kwargs)") is None
    assert _keywords_from_doc("Elementwise exponential.") is None


def test_numpy_only_modules_are_left_out(tmp_path, monkeypatch):
    (tmp_path / "minivae" / "fast").mkdir(parents=True)
    (tmp_path / "minivae" / "layers.py").write_text('"""Layers."""\nX = 1\n')
    (tmp_path / "minivae" / "fast" / "plans.py").write_text('"""Conv plans (NumPy-only)."""\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "minivae")
    assert [p for p, _ in engine_sources()] == ["minivae/layers.py"]


# --------------------------------------------------------------------------------------------
# The engine against CuPy (where CuPy imports; it needs no GPU for this)


def test_the_engine_uses_only_what_cupy_has():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install cupy-cuda12x)")
    sources = engine_sources()
    uses = [u for path, source in sources for u in array_uses(source, path)]
    reached = {u.path for u in uses if u.kind == "module"}
    # The walk must see the engine: its activations and array creation go through xp.
    assert {("exp",), ("tanh",), ("asarray",)} <= reached, sorted(reached)
    problems = surface_problems(uses, cupy, cupy.ndarray)
    assert not problems, "CuPy lacks what the engine uses:\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The bodies of the gpu tier's fused kernels: only what cupy.fuse can fuse (runs everywhere)

KERNELS = PACKAGE / "gpu" / "kernels.py"
FUSABLE_REDUCTIONS = {"sum", "prod", "amax", "amin", "max", "min", "all", "any"}
FUSABLE_OTHERS = {"where"}


def fusable(name):
    """A name cupy.fuse takes inside a body: an elementwise ufunc (NumPy's and, where it
    imports, CuPy's), `where`, or a reduction."""
    if name in FUSABLE_REDUCTIONS | FUSABLE_OTHERS:
        return True
    ufunc = getattr(np, name, None)
    if not isinstance(ufunc, np.ufunc) or ufunc.signature is not None:   # matmul: a gufunc
        return False
    try:
        import cupy
    except ImportError:
        return True
    return isinstance(getattr(cupy, name, None), getattr(cupy, "ufunc", type(None)))


def fused_body_problems(source, filename="<string>"):
    """What a function decorated with @fused does that cupy.fuse cannot: statements other
    than assignments (in-place ones on arguments too, and `arg[...] = ...`) and return, other
    indexing, method calls,
    attribute reads other than xp.<fusable>, calls of anything else."""
    problems = []
    for fn in ast.parse(source, filename).body:
        if not (isinstance(fn, ast.FunctionDef)
                and any(isinstance(d, ast.Name) and d.id == "fused" for d in fn.decorator_list)):
            continue
        args = {a.arg for a in fn.args.args}
        for stmt in fn.body:
            where = f"{filename}:{stmt.lineno} {fn.name}"
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue                                    # the docstring
            if isinstance(stmt, ast.AugAssign):
                if not (isinstance(stmt.target, ast.Name) and stmt.target.id in args):
                    problems.append(f"{where}: in place only on an argument")
            elif not isinstance(stmt, (ast.Assign, ast.Return)):
                problems.append(f"{where}: {type(stmt).__name__} in a fused body")
            if _writes_whole_argument(stmt, args):          # out[...] = expression
                stmt = stmt.value
            for node in ast.walk(stmt):
                if isinstance(node, (ast.Subscript, ast.Lambda, ast.ListComp, ast.GeneratorExp,
                                     ast.IfExp, ast.Dict, ast.List)):
                    problems.append(f"{where}: {type(node).__name__} in a fused body")
                elif isinstance(node, ast.Call):
                    f = node.func
                    if isinstance(f, ast.Name) and f.id == "array_module":
                        continue
                    if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                            and f.value.id == "xp" and fusable(f.attr)):
                        continue
                    problems.append(f"{where}: {ast.unparse(f)}() cannot be fused")
                elif isinstance(node, ast.Attribute) and not (
                        isinstance(node.value, ast.Name) and node.value.id == "xp"):
                    problems.append(f"{where}: .{node.attr} in a fused body")
    return problems


def _writes_whole_argument(stmt, args):
    """`arg[...] = value` or `arg[:] = value`: the one indexing a fused body may do (fusion.pyx,
    _FusionVarScalar.__setitem__), writing an argument."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Subscript)):
        return False
    target = stmt.targets[0]
    whole = (isinstance(target.slice, ast.Constant) and target.slice.value is Ellipsis
             or isinstance(target.slice, ast.Slice) and target.slice.lower is None
             and target.slice.upper is None and target.slice.step is None)
    return whole and isinstance(target.value, ast.Name) and target.value.id in args


def test_the_gpu_kernels_fuse_only_what_cupy_can():
    source = KERNELS.read_text(encoding="utf-8")
    assert source.count("@fused") >= 15
    assert fused_body_problems(source, "gpu/kernels.py") == []


def test_the_fused_body_check_fails_on_what_fuse_cannot_do():
    bad = ("@fused\n"
           "def f(x, y):\n"
           "    xp = array_module(x)\n"
           "    z = x[0] + xp.matmul(x, y)\n"
           "    y.fill(0)\n"
           "    for k in range(3):\n"
           "        z += k\n"
           "    w = xp.tanh(z)\n"
           "    w += 1\n"
           "    return z.reshape(-1)\n")
    problems = fused_body_problems(bad)
    for what in ("Subscript", "xp.matmul() cannot", "y.fill() cannot", "For in a fused",
                 "in place only on an argument", ".reshape"):
        assert any(what in p for p in problems), (what, problems)
