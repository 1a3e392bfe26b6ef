"""The public surface is exactly what __all__ says, and every name in it is importable."""

from __future__ import annotations

import trioserve

PUBLIC = {
    "ASGIError",
    "AppLoadError",
    "ClientCertMode",
    "ClientDisconnected",
    "ConfigError",
    "FdSpec",
    "InheritedFdError",
    "LifespanError",
    "LifespanMode",
    "ListenError",
    "ListenSpec",
    "Listener",
    "Notifier",
    "ServerConfig",
    "SpecError",
    "TLSContext",
    "TcpSpec",
    "TrioserveError",
    "UnixSpec",
    "WorkerStartupError",
    "__version__",
    "inherited_listeners",
    "open_listeners",
    "parse_listen",
    "serve",
}


def test_all_is_the_public_surface() -> None:
    assert set(trioserve.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(trioserve, name) is not None


def test_every_error_is_a_trioserve_error() -> None:
    errors = [
        getattr(trioserve, name)
        for name in PUBLIC
        if isinstance(getattr(trioserve, name), type)
        and issubclass(getattr(trioserve, name), Exception)
    ]
    assert len(errors) == 10
    assert all(issubclass(error, trioserve.TrioserveError) for error in errors)


def test_the_cli_is_the_only_module_that_imports_click() -> None:
    import pathlib

    package = pathlib.Path(trioserve.__file__).parent
    importers = sorted(
        path.name
        for path in package.glob("*.py")
        if "import click" in path.read_text() or "from click" in path.read_text()
    )
    assert importers == ["_cli.py"]


def test_the_protocol_core_never_imports_trio() -> None:
    import pathlib

    package = pathlib.Path(trioserve.__file__).parent
    text = (package / "_protocol.py").read_text()
    assert "import trio" not in text and "from trio" not in text


def test_starting_the_cli_imports_neither_wsproto_nor_h11() -> None:
    """They load with the first WebSocket: a fifth of the import time most servers never need."""
    import subprocess
    import sys

    check = "import sys, trioserve._cli; print(sorted({'wsproto', 'h11'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"
