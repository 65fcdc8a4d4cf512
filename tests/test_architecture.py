"""The package's import graph (read with ``ast``, imports inside functions included): no cycles, layers respected.

Layers: ``contracts`` / ``errors`` / ``config`` at the bottom, then ``data`` and ``models`` (independent of each
other), ``losses``, ``engine``, and ``explain`` / ``cli`` on top; the sibling tasks ``glsa`` / ``flex`` may import
the engine, never the reverse.

The syntax trees also pin single implementations: shared functions defined once, one training ``.backward(``,
``nib.save(`` only in ``io.py``, and ``torch.load(`` always with ``weights_only=True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import survival3d

PKG_DIR = Path(survival3d.__file__).resolve().parent
PKG = "survival3d"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG_DIR.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The package module an import of ``name`` loads (the longest prefix that is one), or None outside it."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Package modules imported anywhere in ``path`` (top level, functions, classes)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from a import b`` loads the module a.b when there is one, else a
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _edges(src_layer: str, dst_layers: tuple[str, ...]) -> list[str]:
    def within(mod: str, layer: str) -> bool:
        full = f"{PKG}.{layer}"
        return mod == full or mod.startswith(full + ".")

    return sorted(
        f"{src} -> {dst}"
        for src, targets in GRAPH.items()
        if within(src, src_layer)
        for dst in targets
        if any(within(dst, layer) for layer in dst_layers)
    )


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_graph_was_read():
    assert len(MODULES) > 50
    assert "survival3d.contracts" in GRAPH["survival3d.models.survival_net"]
    assert "survival3d.data.dummy" in GRAPH["survival3d.data.dummy_dataset"]
    assert "survival3d.build" in GRAPH["survival3d.bench.contenders"]  # imported inside a method


def test_no_import_cycles():
    cycles = _cycles()
    detail = "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(f"{a} -> {b}" for a in c for b in sorted(GRAPH[a]) if b in c)
        for c in cycles
    )
    assert not cycles, f"import cycles:\n{detail}"


def test_contracts_is_a_leaf():
    assert GRAPH["survival3d.contracts"] == set()


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("data", ("models", "losses", "engine", "explain", "cli")),
        ("models", ("data", "engine", "explain", "cli")),
        ("losses", ("engine", "explain", "cli", "data")),
        ("engine", ("cli", "glsa", "flex", "predict")),  # the sibling tasks build on the engine, not the other way
        ("explain", ("cli", "predict")),
        ("predict", ("cli",)),
    ],
)
def test_layers(layer, forbidden):
    bad = _edges(layer, forbidden)
    assert not bad, f"survival3d.{layer} must not import {', '.join(forbidden)}:\n" + "\n".join(bad)


def test_engine_does_not_import_explain():
    bad = _edges("engine", ("explain",))
    assert not bad, "survival3d.engine must not import survival3d.explain:\n" + "\n".join(bad)


def _importlib_uses(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            lines.append(node.lineno)
    return lines


def test_engine_does_not_use_importlib():
    bad = [f"{p.relative_to(PKG_DIR.parent)}:{line}" for p in sorted((PKG_DIR / "engine").rglob("*.py"))
           for line in _importlib_uses(p)]
    assert not bad, "importlib used under survival3d/engine:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------------- one implementation each
TREES = {p: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in MODULES.values()}


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PKG_DIR.parent)}:{node.lineno}"


def _in(path: Path, *parts: str) -> bool:
    """Whether ``path`` is the module or inside the package ``parts`` (relative to survival3d/)."""
    rel = path.relative_to(PKG_DIR).parts
    return rel[: len(parts)] == parts or rel == parts


def _calls(attr: str, owners: tuple[str, ...] | None = None):
    """``(path, call)`` for every call ``x.attr(...)`` in the package (``x`` a name in ``owners`` when given)."""
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                if owners is None or (isinstance(node.func.value, ast.Name) and node.func.value.id in owners):
                    yield path, node


SINGLE_DEFINITIONS = ("load_trained", "aggregate_folds", "model_inputs", "seed_everything", "autocast",
                      "write_nifti", "validation_metrics", "censored_nll", "survival_metrics")


def test_one_definition_of_each_shared_function():
    """Functions that once had copies are defined once (module level, method or nested function alike).

    ``censored_nll`` is the loss formula in ``losses/functional.py``; the numpy metric built on the same likelihood
    is ``metrics.survival.censored_nll_metric``.
    """
    defs: dict[str, list[str]] = {name: [] for name in SINGLE_DEFINITIONS}
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in defs:
                defs[node.name].append(_where(path, node))
    bad = {name: found for name, found in defs.items() if len(found) != 1}
    assert not bad, "each of these must be defined exactly once:\n" + "\n".join(
        f"{name}: {len(found)} definition(s) {found}" for name, found in bad.items())
    assert defs["censored_nll"][0].startswith("survival3d/losses/functional.py:"), defs["censored_nll"]


def test_backward_is_called_only_by_the_engine():
    """One training step in the package: ``loss.backward()`` in ``engine/loop.py``.

    Excluded: ``bench/`` (its own timing loops) and ``explain/`` (gradient-based explainers such as Grad-CAM
    back-propagate a model score, not a training loss). ``torch.autograd.grad`` (e.g. ``flex/attacks.py``) is no
    ``.backward(`` call and is allowed.
    """
    engine = [_where(p, c) for p, c in _calls("backward") if _in(p, "engine", "loop.py")]
    bad = [_where(p, c) for p, c in _calls("backward")
           if not (_in(p, "engine", "loop.py") or _in(p, "bench") or _in(p, "explain"))]
    assert not bad, ".backward( outside engine/loop.py, bench/ and explain/:\n" + "\n".join(bad)
    assert len(engine) == 1, f"engine/loop.py should call .backward( exactly once, found: {engine}"


def test_nifti_is_saved_only_by_io():
    found = [(p, c) for p, c in _calls("save", ("nib", "nibabel"))]
    assert any(_in(p, "io.py") for p, _ in found), "write_nifti's nib.save( was not found: is the scan broken?"
    bad = [_where(p, c) for p, c in found if not _in(p, "io.py")]
    assert not bad, "nib.save( outside survival3d/io.py (use survival3d.io.write_nifti):\n" + "\n".join(bad)


def test_torch_load_is_weights_only():
    """Every ``torch.load(`` passes ``weights_only=True`` (no pickled code is ever executed on load)."""
    bad, calls = [], list(_calls("load", ("torch",)))
    assert any(_in(p, "engine", "checkpoint.py") for p, _ in calls), "load_checkpoint's torch.load( was not found"
    for path, call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        value = kw.get("weights_only")
        if not (isinstance(value, ast.Constant) and value.value is True):
            shown = "missing" if value is None else ast.unparse(value)
            bad.append(f"{_where(path, call)} (weights_only={shown})")
    assert not bad, "torch.load( without weights_only=True:\n" + "\n".join(bad)
