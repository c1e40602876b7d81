"""The running build (pure Python or native) is reported truthfully.

``scripts/test.sh`` runs the suite twice: on the editable pure-Python tree, then on the native
build (``PYTHONPATH=build/native`` with ``METAMESH_EXPECT_NATIVE=1``). There every module that
``setup.py`` lists must have been loaded compiled, so a module silently falling back to Python
(or a build that compiled nothing) fails here rather than skewing a benchmark.
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

from metamesh import build_info

ROOT = Path(__file__).resolve().parent.parent


def hot_path_modules() -> list[str]:
    """``setup.py``'s ``HOT_PATH_MODULES``, as dotted module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "HOT_PATH_MODULES" for t in targets):
                assert node.value is not None
                paths = ast.literal_eval(node.value)
                return ["metamesh." + p.replace("/", ".") for p in paths]
    raise AssertionError("setup.py defines no HOT_PATH_MODULES")


def test_hot_path_modules_exist() -> None:
    modules = hot_path_modules()
    assert len(modules) == len(set(modules))
    for name in modules:
        path = ROOT / "src" / (name.replace(".", "/") + ".py")
        assert path.is_file(), f"setup.py lists {name}, but {path} does not exist"


def test_report_matches_where_modules_were_loaded() -> None:
    modules = [importlib.import_module(name) for name in hot_path_modules()]
    compiled = set(build_info.compiled_modules())
    from_extensions = {m.__name__ for m in modules if not (m.__file__ or "").endswith(".py")}
    assert from_extensions <= compiled
    assert compiled <= set(hot_path_modules())
    if os.environ.get("METAMESH_EXPECT_NATIVE") == "1":
        assert from_extensions == {m.__name__ for m in modules}, "modules left uncompiled"
        assert build_info.is_native()
        assert build_info.describe() == f"native (mypyc, {len(compiled)} modules compiled)"
    else:
        assert from_extensions == set() == compiled
        assert not build_info.is_native()
        assert build_info.describe() == "pure Python"
