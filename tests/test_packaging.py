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
