"""A plain ``pip install factorch`` (no extras) runs every method: whatever the package imports
comes from a declared dependency (or its declared dependencies), or is guarded.

The dev environment holds more than a plain install (pytest, tqdm, Pillow, ...), which hides an
undeclared import. So the smoke test (``tests/plain_install_smoke.py``, also run by ``make test``
in a real extras-free environment) runs here with every distribution outside the declared
closure blocked, as if it were not installed.
"""
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_closure() -> set[str]:
    """The distributions a plain install brings: pyproject's dependencies and, transitively,
    the unconditional requirements of each (as installed here)."""
    from packaging.requirements import Requirement

    todo = list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    seen: set[str] = set()
    while todo:
        req = Requirement(todo.pop())
        name = _canonical(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            pass  # declared but not installed here: nothing of it can be imported anyway
    return seen


def plain_site(allowed: set[str], where: Path) -> Path:
    """A site directory holding only the ``allowed`` distributions: links to their top-level
    packages, modules and metadata, as a plain install would lay them out."""
    site = where / "site-packages"
    site.mkdir()
    for dist in metadata.distributions():
        if _canonical(dist.metadata["Name"]) not in allowed:
            continue
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return site


def test_every_method_and_the_cli_run_with_only_declared_dependencies(tmp_path):
    allowed = declared_closure()
    site = plain_site(allowed, tmp_path)
    # -S: no site-packages of this environment; the package from this checkout, the rest from `site`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "tests" / "plain_install_smoke.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "plain-install smoke test passed" in proc.stdout


def test_the_closure_sees_what_a_plain_install_lacks():
    """The check can fail: the dev tools are outside the closure, the core dependencies inside."""
    closure = declared_closure()
    assert {"torch", "numpy", "tensorly"} <= closure
    assert not {"pytest", "tqdm", "matplotlib", "pillow", "onnx"} & closure


def _imports(package: Path) -> dict[str, set[str]]:
    """Module -> the factorch modules it imports (at module level or inside functions; not under
    ``TYPE_CHECKING``), each resolved to the module that defines it."""
    import ast

    modules = {".".join(f.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in package.rglob("*.py")}

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                       ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("factorch"):
                found |= {owner(node.module)} | {owner(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {owner(a.name) for a in node.names if a.name.startswith("factorch")}
        graph[name] = found - {name, ""}
    return graph


def test_the_package_has_no_import_cycle():
    """Dependencies point one way (decompositions <- layers <- registry <- api <- training <- cli):
    no module imports, even lazily, a module that imports it back."""
    graph = _imports(ROOT / "factorch")
    seen, done, path = set(), set(), []

    def visit(module: str) -> None:
        seen.add(module)
        path.append(module)
        for dep in sorted(graph[module]):
            assert dep not in path, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in seen:
                visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in seen:
            visit(module)
    assert "factorch.training.config" in graph and graph["factorch.api"]  # the walk saw the package
