"""The `trioserve` command: a thin click layer over `serve()`.

This is the only module that imports click and the only one that touches process-wide state:
logging configuration and the SIGTERM/SIGINT handlers (the first drains, a second one stops at
once). Every option can also be given as a `TRIOSERVE_*` environment variable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import click
import trio

from . import __version__
from ._asgi_types import ASGIApp
from ._config import ServerConfig
from ._errors import ConfigError, TrioserveError
from ._importer import check_app_path, load_app
from ._listeners import Listener, default_listen_specs, open_listeners
from ._notify import Notifier
from ._serve import serve
from ._spec import ListenSpec, parse_listen
from ._supervisor import Supervisor, fd_names
from ._tls import TLSContext

__all__ = ["main"]

log = logging.getLogger("trioserve.error")

EXIT_USAGE = 2  # bad input: a spec, an import path, an inherited fd, a setting
EXIT_FORCED = 1  # a second signal cut the drain short

_DEFAULTS = ServerConfig()


def _parse_specs(values: tuple[str, ...]) -> list[ListenSpec]:
    # An environment variable can carry several specs separated by whitespace.
    return [parse_listen(item) for value in values for item in value.split()]


# The numeric ServerConfig knobs: (flag, type, help). Each default is ServerConfig's own, and
# each value goes to the field of the same name, so a new knob is one row here.
_KNOBS: tuple[tuple[str, Any, str], ...] = (
    ("--keep-alive-timeout", float, "Seconds an idle keep-alive connection stays open."),
    ("--header-timeout", float, "Seconds a client has to send a whole request head (408 after)."),
    ("--body-timeout", float, "Seconds without a body byte while the app waits for one."),
    ("--write-timeout", float, "Seconds without the client accepting any response byte."),
    ("--max-header-size", int, "Largest request head in bytes (431 beyond)."),
    ("--max-header-count", int, "Most header fields in a request (431 beyond)."),
    ("--max-body-size", int, "Largest request body in bytes (413 beyond). Default: no limit."),
    (
        "--limit-concurrency",
        int,
        "Requests in progress at most; beyond it 503. Default: no limit.",
    ),
    (
        "--graceful-timeout",
        float,
        "Seconds in-flight requests get to finish after SIGTERM/SIGINT.",
    ),
    ("--tls-handshake-timeout", float, "Seconds a TLS client has to complete the handshake."),
    (
        "--websocket-max-message-size",
        click.IntRange(min=1),
        "Largest WebSocket message in bytes; beyond it the connection closes with 1009.",
    ),
    (
        "--websocket-ping-interval",
        float,
        "Seconds between pings on a connected WebSocket; 0 sends none.",
    ),
    (
        "--websocket-ping-timeout",
        float,
        "Seconds a WebSocket client has to send anything after a ping (1011 after).",
    ),
)


def _knob_options(command: Callable[..., None]) -> Callable[..., None]:
    for flag, kind, text in reversed(_KNOBS):
        default = getattr(_DEFAULTS, flag[2:].replace("-", "_"))
        command = click.option(flag, type=kind, default=default, help=text)(command)
    return command


def _config_from(params: dict[str, Any]) -> ServerConfig:
    """ServerConfig from the CLI's parameters: every one named like a field goes to it."""
    fields = {field.name for field in dataclasses.fields(ServerConfig)}
    values = {name: value for name, value in params.items() if name in fields}
    values["server_header"] = "trioserve" if params["server_header"] else None
    values["forwarded_allow_ips"] = tuple(params["forwarded_allow_ips"].split(","))
    if params["websocket_ping_interval"] == 0:
        values["websocket_ping_interval"] = None
    return ServerConfig(**values)


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
@_knob_options
@click.option(
    "--server-header/--no-server-header",
    default=True,
    help="Send a 'Server: trioserve' header.",
)
@click.option("--access-log/--no-access-log", default=True, help="Log one line per request.")
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=_DEFAULTS.proxy_headers,
    help="Take the client, scheme and host from Forwarded / X-Forwarded-* headers sent by a "
    "peer in --forwarded-allow-ips. See docs/proxy.md.",
)
@click.option(
    "--forwarded-allow-ips",
    default=",".join(_DEFAULTS.forwarded_allow_ips),
    metavar="LIST",
    help="Comma-separated IPs, CIDRs, 'unix' (peers on unix sockets) or '*' trusted to send "
    "proxy headers.",
)
@click.option(
    "--certfile",
    type=click.Path(dir_okay=False),
    default=None,
    help="PEM certificate chain for the listeners marked ?tls=1 (reloaded on SIGHUP). See "
    "docs/tls.md.",
)
@click.option(
    "--keyfile",
    type=click.Path(dir_okay=False),
    default=None,
    help="PEM private key, if not in --certfile.",
)
@click.option(
    "--ca-certs",
    type=click.Path(dir_okay=False),
    default=None,
    help="PEM CA certificates that client certificates must chain to.",
)
@click.option(
    "--tls-client-cert",
    type=click.Choice(["none", "optional", "required"]),
    default=_DEFAULTS.tls_client_cert,
    help="Ask TLS clients for a certificate (needs --ca-certs).",
)
@click.option(
    "--websocket-per-message-deflate/--no-websocket-per-message-deflate",
    default=_DEFAULTS.websocket_per_message_deflate,
    help="Compress WebSocket messages (permessage-deflate) when the client offers it.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run N worker processes on the same sockets under a supervisor (SIGHUP: rolling "
    "restart). Default: one process, no supervisor.",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Development: restart the worker when a .py file under --reload-dir changes. Needs "
    "the 'reload' extra (watchfiles).",
)
@click.option(
    "--reload-dir",
    "reload_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory to watch with --reload (repeatable). Default: --app-dir.",
)
@click.option(
    "--max-requests",
    type=click.IntRange(min=1),
    default=None,
    help="Under the supervisor, replace a worker after about this many requests.",
)
@click.option(
    "--max-requests-jitter",
    type=click.IntRange(min=0),
    default=0,
    help="Add up to this many to --max-requests, per worker, so they do not recycle together.",
)
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
    workers: int | None,
    reload: bool,
    reload_dirs: tuple[str, ...],
    max_requests_jitter: int,
    log_level: str,
    **params: Any,
) -> None:
    """Serve the ASGI application APP (module:attribute) over HTTP/1.1.

    Try: trioserve trioserve.demo:app --listen 127.0.0.1:8000
    """
    _configure_logging(log_level, params["access_log"])
    try:
        specs = _parse_specs(listen)
        config = _config_from(params)
        # Loaded before anything listens: a missing or bad certificate is one line, exit 2.
        # (Supervised workers load their own; this checks the files first.)
        tls = TLSContext(config) if any(spec.tls for spec in specs) else None
        if workers is None and not reload:
            asgi_app = load_app(app, factory=factory, app_dir=app_dir)
            code = trio.run(_run, _Single(asgi_app, specs or None, config, tls))
        else:
            check_app_path(app, app_dir=app_dir)
            supervised = _Supervised(
                command=_worker_command(click.get_current_context()),
                specs=specs or None,
                workers=workers or 1,
                config=config,
                max_requests_jitter=max_requests_jitter,
                reload_dirs=[os.path.abspath(d) for d in reload_dirs or (app_dir,)]
                if reload
                else None,
            )
            code = trio.run(_run, supervised)
    except TrioserveError as exc:
        click.echo(f"trioserve: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


class _Runner(Protocol):
    async def run(self, notifier: Notifier, force_stop: trio.Event) -> None: ...

    def restart(self) -> str | None:
        """Act on SIGHUP; say what was done, or None if there is nothing to do."""


@dataclass
class _Single:
    """One process serving the app itself."""

    app: ASGIApp
    specs: list[ListenSpec] | None
    config: ServerConfig
    tls: TLSContext | None = None

    async def run(self, notifier: Notifier, force_stop: trio.Event) -> None:
        await serve(
            self.app,
            self.specs,
            config=self.config,
            notifier=notifier,
            force_stop=force_stop,
            tls=self.tls,
        )

    def restart(self) -> str | None:
        if self.tls is None:
            return None
        try:
            self.tls.reload()
        except ConfigError as exc:
            return f"keeping the TLS certificates in use: {exc}"
        return "reloaded the TLS certificates (new connections use them)"


@dataclass
class _Supervised:
    """The supervisor: it holds the sockets and runs the app in socket-activated workers."""

    command: list[str]
    specs: list[ListenSpec] | None
    workers: int
    config: ServerConfig
    max_requests_jitter: int
    reload_dirs: list[str] | None
    supervisor: Supervisor | None = None

    async def run(self, notifier: Notifier, force_stop: trio.Event) -> None:
        listeners = await open_listeners(
            default_listen_specs() if self.specs is None else self.specs
        )
        try:
            self.supervisor = Supervisor(
                self.command + _worker_listen_args(listeners),
                listeners,
                workers=self.workers,
                graceful_timeout=self.config.graceful_timeout,
                max_requests=self.config.max_requests,
                max_requests_jitter=self.max_requests_jitter,
                notifier=notifier,
                reload_dirs=self.reload_dirs,
                force_stop=force_stop,
            )
            for listener in listeners:
                log.info("listening on %s", listener)
            await self.supervisor.run()
        finally:
            for listener in listeners:
                listener.close()

    def restart(self) -> str | None:
        if self.supervisor is None:
            return None
        self.supervisor.restart()
        return "rolling restart"


async def _run(runner: _Runner) -> int:
    """Run until a signal: the first SIGTERM/SIGINT drains, a second stops at once; SIGHUP
    restarts the workers when there are any."""
    notifier = Notifier.from_environ()
    force_stop = trio.Event()
    error: TrioserveError | None = None
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def run() -> None:
                    nonlocal error
                    try:
                        with scope:
                            await runner.run(notifier, force_stop)
                    except TrioserveError as exc:
                        error = exc
                    nursery.cancel_scope.cancel()

                nursery.start_soon(run)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        done = runner.restart()
                        if done is not None:
                            log.info("SIGHUP: %s", done)
                        else:
                            log.warning(
                                "SIGHUP ignored: no workers to restart (see --workers) and "
                                "no TLS certificates to reload"
                            )
                    elif not scope.cancel_called:
                        log.info("%s: draining (send it again to stop at once)", name)
                        scope.cancel()
                    else:
                        log.warning("%s again: stopping now", name)
                        force_stop.set()
    finally:
        notifier.close()
    if error is not None:
        raise error
    return EXIT_FORCED if force_stop.is_set() else 0


# Options that belong to the supervisor and are not passed on to its workers.
_SUPERVISOR_ONLY = frozenset(
    {"app", "listen", "workers", "reload", "reload_dirs", "max_requests", "max_requests_jitter"}
)


def _worker_listen_args(listeners: list[Listener]) -> list[str]:
    """`--listen fd:NAME?tls=1` for the workers when some listener is TLS.

    A worker adopts every inherited fd by default, as plain HTTP: TLS is ours, not the socket's,
    so the workers must be told which fds carry it. Without TLS nothing is added.
    """
    if not any(listener.tls for listener in listeners):
        return []
    tls_by_name: dict[str, bool] = {}
    for listener, name in zip(listeners, fd_names(listeners), strict=True):
        if tls_by_name.setdefault(name, listener.tls) != listener.tls:
            raise ConfigError(f"fds named {name!r} are TLS and plain at once: name them apart")
    args: list[str] = []
    for name, tls in tls_by_name.items():
        args += ["--listen", f"fd:{name}?tls=1" if tls else f"fd:{name}"]
    return args


def _worker_command(ctx: click.Context) -> list[str]:
    """The command line a worker runs: this one, less the supervisor's own options.

    Built from click's parsed parameters rather than by editing argv, so every option (also
    those given as TRIOSERVE_* variables, which workers do not inherit) reaches the workers.
    """
    args = [sys.executable, "-m", "trioserve", ctx.params["app"]]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in _SUPERVISOR_ONLY:
            continue
        value = ctx.params.get(param.name or "")
        if param.name == "app_dir":
            value = os.path.abspath(str(value))
        if param.is_flag:
            if param.secondary_opts:
                args.append(param.opts[-1] if value else param.secondary_opts[-1])
            elif value:
                args.append(param.opts[-1])
        elif value is not None:
            args += [param.opts[-1], str(value)]
    return args


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
