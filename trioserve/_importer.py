"""Resolve `module:attr` to the ASGI callable it names, with errors a user can act on."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, cast

from ._asgi_types import ASGIApp
from ._errors import AppLoadError

__all__ = ["check_app_path", "load_app"]


def load_app(path: str, *, factory: bool = False, app_dir: str | None = None) -> ASGIApp:
    """Import `module:attr` (attr may be dotted; a bare module means `module:app`).

    With `factory`, the attribute is called with no arguments and its result is the app.
    `app_dir` goes first on sys.path, as a deployment's working directory usually should.
    """
    module_name, _, attrs = path.partition(":")
    attrs = attrs or "app"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"{path!r} is not an import path of the form 'module:attribute'")
    if not all(part.isidentifier() for part in attrs.split(".")):
        raise AppLoadError(f"{path!r}: {attrs!r} is not a (dotted) attribute name")
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(f"cannot import {path!r}: no module named {exc.name!r}") from exc
        raise AppLoadError(f"importing {module_name!r} failed: {_describe(exc)}") from exc
    except Exception as exc:
        raise AppLoadError(f"importing {module_name!r} failed: {_describe(exc)}") from exc
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppLoadError(
                f"cannot import {path!r}: {module_name!r} has no attribute {attrs!r}"
            ) from None
    if factory:
        if not callable(obj):
            raise AppLoadError(f"--factory: {path!r} is not callable")
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(f"app factory {path!r} failed: {_describe(exc)}") from exc
    if not callable(obj):
        raise AppLoadError(f"{path!r} is a {type(obj).__name__}, not an ASGI application")
    return cast(ASGIApp, obj)


def check_app_path(path: str, *, app_dir: str | None = None) -> None:
    """Check that `path`'s module can be found, without importing it.

    The supervisor never imports the app (its workers do, fresh each time), but a typo in the
    module name should still be one clear line at once, not a worker that fails to start.
    """
    module_name, _, attrs = path.partition(":")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"{path!r} is not an import path of the form 'module:attribute'")
    if attrs and not all(part.isidentifier() for part in attrs.split(".")):
        raise AppLoadError(f"{path!r}: {attrs!r} is not a (dotted) attribute name")
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise AppLoadError(f"cannot import {path!r}: {_describe(exc)}") from exc
    if spec is None:
        raise AppLoadError(f"cannot import {path!r}: no module named {module_name!r}")


def _describe(exc: BaseException) -> str:
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {exc}{where}"
