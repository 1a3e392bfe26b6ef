"""The servers under test and the virtual environment they all run from.

`benchmarks/.venv-peers` (git-ignored) holds the peers at pinned versions from PyPI, matplotlib
for the chart, and this repository installed in editable mode, so trioserve and every peer run
the same interpreter and import the same `apps` module. It is built on first use and rebuilt
when the pins below change (a stamp file inside it records what was installed).

Every server runs as one process with one worker (granian forks its one worker; the harness sums
the process tree), logs at warning level with access logs off, keeps idle connections for 300 s
(so the memory scenario measures connections, not a keep-alive timeout) and otherwise runs with
its defaults.

For the TLS scenarios every server that can serve HTTPS gets the harness's certificate and key
(made once per run with openssl, see run.py) through its own flags, and otherwise keeps its own
TLS defaults (protocol versions, ciphers).

`trio-limit` is not a server but a reference: `trio_limit.py`, trio's streams answering every
request head with trioserve's hello-world bytes, without parsing HTTP or running an app. It only
stands in for `apps:hello` under load, without TLS, so it is measured in the plain hello load
scenarios only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PINS", "SERVERS", "Server", "Tls", "ensure_venv", "installed_versions"]

PINS = (
    "hypercorn==0.18.0",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "uvloop==0.23.0",
    "trio==0.35.0",
    "h11==0.16.0",
    "matplotlib==3.11.2",
    # mypyc (and the setuptools it builds with), for trioserve-compiled: see run.py.
    "mypy==2.4.1",
    "setuptools==80.9.0",
)
# Rust wheels: installed on their own so that a platform without one still gets the rest.
OPTIONAL_PINS = ("granian==2.8.7",)
KEEP_ALIVE = "300"
_STAMP = "bench-stamp.json"
_BENCH_DIR = Path(__file__).resolve().parent

# (certificate, key) for a server to serve HTTPS with; None serves plain HTTP.
Tls = tuple[Path, Path] | None


@dataclass(frozen=True)
class Server:
    name: str
    title: str  # how tables and the chart name it
    package: str  # the distribution whose version the report shows
    # (venv bin dir, "apps:NAME", port, TLS certificate and key or None) -> argv
    argv: Callable[[Path, str, int, Tls], list[str]]
    notify: bool = False  # readiness through NOTIFY_SOCKET, listening on port 0
    # What it can serve: scenario kinds (`load`, `memory`, ...) and apps (`hello`, ...); None is
    # every one. run.py leaves a server out of any scenario it cannot serve.
    kinds: tuple[str, ...] | None = None
    apps: tuple[str, ...] | None = None
    tls: bool = True  # can serve HTTPS, for the TLS scenarios
    # trioserve built with TRIOSERVE_COMPILE=1 (setup.py): the harness builds that core once
    # per run and puts it first on PYTHONPATH for this server.
    compiled: bool = False

    def serves(self, kind: str, app: str, *, tls: bool = False) -> bool:
        """Whether a scenario of this kind, serving this app (over TLS or not), can be run
        against it."""
        return (
            (self.kinds is None or kind in self.kinds)
            and (self.apps is None or app in self.apps)
            and (self.tls or not tls)
        )


def _trioserve(bin_dir: Path, app: str, port: int, tls: Tls) -> list[str]:
    argv = [
        str(bin_dir / "trioserve"),
        app,
        "--listen",
        f"127.0.0.1:{port}?tls=1" if tls else f"127.0.0.1:{port}",
        "--no-access-log",
        "--log-level",
        "warning",
        "--keep-alive-timeout",
        KEEP_ALIVE,
    ]
    if tls:
        argv += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    return argv


def _hypercorn_trio(bin_dir: Path, app: str, port: int, tls: Tls) -> list[str]:
    # -w 0 serves in the hypercorn process itself instead of forking one worker.
    argv = [
        str(bin_dir / "hypercorn"),
        "--worker-class",
        "trio",
        "--workers",
        "0",
        "--keep-alive",
        KEEP_ALIVE,
        "--log-level",
        "warning",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    if tls:
        argv += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    return [*argv, app]


def _uvicorn(http: str, loop: str) -> Callable[[Path, str, int, Tls], list[str]]:
    def argv(bin_dir: Path, app: str, port: int, tls: Tls) -> list[str]:
        command = [
            str(bin_dir / "uvicorn"),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            http,
            "--loop",
            loop,
            "--lifespan",
            "on",
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-keep-alive",
            KEEP_ALIVE,
        ]
        if tls:
            command += ["--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1])]
        return command

    return argv


def _granian(bin_dir: Path, app: str, port: int, tls: Tls) -> list[str]:
    # granian has no HTTP/1 idle timeout to raise. Its --backpressure (requests in progress per
    # worker, open keep-alive connections included) defaults to its backlog, 1,024: the 1,025th
    # idle connection would never be answered, so it is raised for the idle scenarios. Its TLS
    # key must be PKCS#8, which is what `openssl req -newkey` writes.
    argv = [
        str(bin_dir / "granian"),
        "--interface",
        "asgi",
        "--http",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--backpressure",
        "16384",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if tls:
        argv += ["--ssl-certificate", str(tls[0]), "--ssl-keyfile", str(tls[1])]
    return [*argv, app]


def _trio_limit(bin_dir: Path, app: str, port: int, tls: Tls) -> list[str]:
    # Not a server: trio's streams with a canned reply, the ceiling for any server on them. It
    # speaks no TLS (tls=False below), so it is never started with a certificate.
    return [str(bin_dir / "python"), str(_BENCH_DIR / "trio_limit.py"), app, str(port)]


SERVERS = {
    server.name: server
    for server in (
        Server("trioserve", "trioserve", "trioserve", _trioserve, notify=True),
        Server(
            "trioserve-compiled",
            "trioserve, compiled core (mypyc)",
            "trioserve",
            _trioserve,
            notify=True,
            compiled=True,
        ),
        Server("hypercorn-trio", "hypercorn (trio)", "hypercorn", _hypercorn_trio),
        Server("uvicorn-h11", "uvicorn (h11, asyncio)", "uvicorn", _uvicorn("h11", "asyncio")),
        Server(
            "uvicorn-httptools",
            "uvicorn (httptools, uvloop)",
            "uvicorn",
            _uvicorn("httptools", "uvloop"),
        ),
        Server("granian", "granian", "granian", _granian),
        Server(
            "trio-limit",
            "trio limit (canned reply, no HTTP, no ASGI)",
            "trio",
            _trio_limit,
            kinds=("load",),
            apps=("hello",),
            tls=False,
        ),
    )
}


def _pip(python: Path, *args: str) -> bool:
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    return subprocess.run([*command, *args], check=False).returncode == 0


def ensure_venv(venv: Path, repo: Path, *, rebuild: bool = False) -> list[str]:
    """Create or reuse the peers' venv; returns the optional pins that did not install."""
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    wanted = {"pins": list(PINS), "optional": list(OPTIONAL_PINS)}
    if not rebuild and python.exists() and stamp.exists():
        recorded = json.loads(stamp.read_text())
        if {key: recorded.get(key) for key in wanted} == wanted:
            missing: list[str] = recorded.get("missing", [])
            return missing
    print(f"setting up {venv.name} (peers at pinned versions, this repo editable)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    if not _pip(python, *PINS, "-e", str(repo)):
        raise SystemExit("pip could not install the pinned peers; see its output above")
    missing = [pin for pin in OPTIONAL_PINS if not _pip(python, pin)]
    for pin in missing:
        print(f"note: {pin} did not install; its server is left out", flush=True)
    stamp.write_text(json.dumps({**wanted, "missing": missing}, indent=1) + "\n")
    return missing


def installed_versions(venv: Path) -> dict[str, str]:
    """Versions of the servers and their parsers in the venv, for the report."""
    names = ["trioserve", "hypercorn", "uvicorn", "h11", "httptools", "uvloop", "trio", "granian"]
    script = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, *names],
        check=True,
        capture_output=True,
        text=True,
    )
    versions: dict[str, str] = json.loads(result.stdout)
    return versions
