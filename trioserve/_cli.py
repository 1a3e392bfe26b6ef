"""The `trioserve` command: a thin click layer over `serve()`.

This is the only module that imports click and the only one that touches process-wide state:
logging configuration and the SIGTERM/SIGINT handlers (the first drains, a second one stops at
once). Every option can also be given as a `TRIOSERVE_*` environment variable.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click
import trio

from . import __version__
from ._asgi_types import ASGIApp
from ._config import ServerConfig
from ._errors import TrioserveError
from ._importer import load_app
from ._notify import Notifier
from ._serve import serve
from ._spec import ListenSpec, parse_listen

__all__ = ["main"]

log = logging.getLogger("trioserve.error")

EXIT_USAGE = 2  # bad input: a spec, an import path, an inherited fd, a setting
EXIT_FORCED = 1  # a second signal cut the drain short

_DEFAULTS = ServerConfig()


def _parse_specs(values: tuple[str, ...]) -> list[ListenSpec]:
    # An environment variable can carry several specs separated by whitespace.
    return [parse_listen(item) for value in values for item in value.split()]


@click.command(context_settings={"auto_envvar_prefix": "TRIOSERVE", "show_default": True})
@click.argument("app", envvar="TRIOSERVE_APP")
@click.option(
    "-l",
    "--listen",
    "-b",
    "--bind",
    "listen",
    multiple=True,
    metavar="SPEC",
    help="Where to listen (repeatable): HOST:PORT, [V6]:PORT, :PORT, unix:PATH, fd:NAME, "
    "fd:N, fd:*. Default: every socket-activated fd, else 127.0.0.1:8000. See docs/listen.md.",
)
@click.option("--factory", is_flag=True, help="APP names a factory to call for the app.")
@click.option("--app-dir", default=".", help="Directory put first on sys.path to import APP.")
@click.option(
    "--lifespan",
    type=click.Choice(["auto", "on", "off"]),
    default=_DEFAULTS.lifespan,
    help="Run the app's lifespan startup/shutdown (auto: if it supports it).",
)
@click.option("--root-path", default=_DEFAULTS.root_path, help="ASGI root_path for the app.")
@click.option(
    "--keep-alive-timeout",
    type=float,
    default=_DEFAULTS.keep_alive_timeout,
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option(
    "--header-timeout",
    type=float,
    default=_DEFAULTS.header_timeout,
    help="Seconds a client has to send a whole request head (408 after).",
)
@click.option(
    "--body-timeout",
    type=float,
    default=_DEFAULTS.body_timeout,
    help="Seconds without a body byte while the app waits for one.",
)
@click.option(
    "--write-timeout",
    type=float,
    default=_DEFAULTS.write_timeout,
    help="Seconds without the client accepting any response byte.",
)
@click.option(
    "--max-header-size",
    type=int,
    default=_DEFAULTS.max_header_size,
    help="Largest request head in bytes (431 beyond).",
)
@click.option(
    "--max-body-size",
    type=int,
    default=None,
    help="Largest request body in bytes (413 beyond). Default: no limit.",
)
@click.option(
    "--limit-concurrency",
    type=int,
    default=None,
    help="Requests in progress at most; beyond it 503. Default: no limit.",
)
@click.option(
    "--graceful-timeout",
    type=float,
    default=_DEFAULTS.graceful_timeout,
    help="Seconds in-flight requests get to finish after SIGTERM/SIGINT.",
)
@click.option(
    "--server-header/--no-server-header",
    default=True,
    help="Send a 'Server: trioserve' header.",
)
@click.option("--access-log/--no-access-log", default=True, help="Log one line per request.")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
)
@click.version_option(__version__, prog_name="trioserve")
def cli(
    app: str,
    listen: tuple[str, ...],
    factory: bool,
    app_dir: str,
    lifespan: Any,
    root_path: str,
    keep_alive_timeout: float,
    header_timeout: float,
    body_timeout: float,
    write_timeout: float,
    max_header_size: int,
    max_body_size: int | None,
    limit_concurrency: int | None,
    graceful_timeout: float,
    server_header: bool,
    access_log: bool,
    log_level: str,
) -> None:
    """Serve the ASGI application APP (module:attribute) over HTTP/1.1.

    Try: trioserve trioserve.demo:app --listen 127.0.0.1:8000
    """
    _configure_logging(log_level, access_log)
    try:
        specs = _parse_specs(listen)
        config = ServerConfig(
            keep_alive_timeout=keep_alive_timeout,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            write_timeout=write_timeout,
            max_header_size=max_header_size,
            max_body_size=max_body_size,
            limit_concurrency=limit_concurrency,
            root_path=root_path,
            lifespan=lifespan,
            server_header="trioserve" if server_header else None,
            graceful_timeout=graceful_timeout,
            access_log=access_log,
        )
        asgi_app = load_app(app, factory=factory, app_dir=app_dir)
        code = trio.run(_run, asgi_app, specs or None, config)
    except TrioserveError as exc:
        click.echo(f"trioserve: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


async def _run(app: ASGIApp, specs: list[ListenSpec] | None, config: ServerConfig) -> int:
    """Serve until a signal; the first drains, a second cuts the drain short."""
    notifier = Notifier.from_environ()
    force_stop = trio.Event()
    error: TrioserveError | None = None
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                serve_scope = trio.CancelScope()

                async def run_server() -> None:
                    nonlocal error
                    try:
                        with serve_scope:
                            await serve(
                                app,
                                specs,
                                config=config,
                                notifier=notifier,
                                force_stop=force_stop,
                            )
                    except TrioserveError as exc:
                        error = exc
                    nursery.cancel_scope.cancel()

                nursery.start_soon(run_server)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not serve_scope.cancel_called:
                        log.info("%s: draining (send it again to stop at once)", name)
                        serve_scope.cancel()
                    else:
                        log.warning("%s again: stopping now", name)
                        force_stop.set()
    finally:
        notifier.close()
    if error is not None:
        raise error
    return EXIT_FORCED if force_stop.is_set() else 0


def _configure_logging(level: str, access_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(message)s"))
    for name in ("trioserve.error", "trioserve.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("trioserve.access").disabled = not access_log


def main() -> None:
    cli(prog_name="trioserve")
