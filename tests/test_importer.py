"""APP import paths: the good forms, and one readable error for each bad one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioserve import AppLoadError
from trioserve._importer import load_app

MODULE = """
async def app(scope, receive, send):
    pass

class Holder:
    async def inner(self, scope, receive, send):
        pass

holder = Holder()

def make_app():
    return app

def broken_factory():
    raise ValueError("no database")

not_callable = 42
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "sample_app_mod.py").write_text(MODULE)
    (tmp_path / "broken_app_mod.py").write_text("import not_installed_anywhere_xyz\n")
    (tmp_path / "raising_app_mod.py").write_text("raise RuntimeError('boom at import')\n")
    yield str(tmp_path)
    for name in ("sample_app_mod", "broken_app_mod", "raising_app_mod"):
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_forms(app_dir: str) -> None:
    app = load_app("sample_app_mod:app", app_dir=app_dir)
    assert app.__name__ == "app"
    assert load_app("sample_app_mod", app_dir=app_dir) is app
    assert load_app("sample_app_mod:make_app", factory=True, app_dir=app_dir) is app
    bound = load_app("sample_app_mod:holder.inner", app_dir=app_dir)
    assert bound.__name__ == "inner"


@pytest.mark.parametrize(
    ("path", "factory", "message"),
    [
        ("", False, "not an import path"),
        ("a b:app", False, "not an import path"),
        ("sample_app_mod:1x", False, "not a (dotted) attribute name"),
        ("no_such_module_xyz:app", False, "no module named 'no_such_module_xyz'"),
        ("sample_app_mod:missing", False, "has no attribute 'missing'"),
        ("sample_app_mod:not_callable", False, "is a int, not an ASGI application"),
        ("sample_app_mod:broken_factory", True, "ValueError: no database"),
        ("broken_app_mod:app", False, "No module named 'not_installed_anywhere_xyz'"),
        ("raising_app_mod:app", False, "RuntimeError: boom at import"),
    ],
)
def test_errors_are_one_line(app_dir: str, path: str, factory: bool, message: str) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(path, factory=factory, app_dir=app_dir)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
