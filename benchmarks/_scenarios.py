"""What the benchmark measures, and how each kind of scenario is run against one server.

Four kinds:
- `load`: wrk against one app for a fixed time after a short warmup at the same concurrency;
  gives req/s, p50/p99 latency and the server's CPU time per request (utime+stime of the server's
  process tree over the measured run, from /proc, divided by the requests wrk counted), and how
  much of either core anything else took meanwhile (from /proc/stat). A TLS scenario is the
  same over HTTPS: the server gets the run's certificate and wrk an `https://` URL.
- `memory`: the server's RSS after a short warmup, then after a client process has opened N
  keep-alive connections that each did one request and now sit idle; (after - before) / N.
- `startup`: from spawning the server process to the first 200 it serves, median of three.
- `sigterm`: from SIGTERM to the process's exit while 1,000 idle keep-alive connections are open.

Every server gets a fresh process per scenario, pinned to the server core; wrk and the idle
client run pinned to the load core.
"""

from __future__ import annotations

import resource
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import _wrk
from _peers import Server
from _process import (
    ServerProcess,
    StartError,
    core_busy_seconds,
    free_port,
    request_ok,
    start_server,
    wait_until_quiet,
)

__all__ = ["QUICK", "SCENARIOS", "Bench", "Measurement", "Scenario"]

Kind = Literal["load", "memory", "startup", "sigterm"]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Kind
    title: str
    app: str  # attribute of benchmarks/apps.py
    connections: int = 0
    script: str | None = None  # wrk lua script in benchmarks/
    # Over HTTPS with the run's self-signed certificate (Bench.certfile); load scenarios only.
    tls: bool = False


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("hello-1", "load", "hello world, 1 connection", "hello", 1),
        Scenario("hello-64", "load", "hello world, 64 connections", "hello", 64),
        Scenario("hello-256", "load", "hello world, 256 connections", "hello", 256),
        Scenario(
            "stream-64", "load", "streamed 16 x 1 KiB (chunked), 64 connections", "stream", 64
        ),
        Scenario("big-64", "load", "64 KiB response, 64 connections", "big", 64),
        Scenario("upload-16", "load", "1 MiB upload, 16 connections", "upload", 16, "upload.lua"),
        Scenario(
            "https-64", "load", "hello world over TLS, 64 connections", "hello", 64, tls=True
        ),
        Scenario(
            "idle-2000", "memory", "memory per idle keep-alive connection, 2,000", "hello", 2000
        ),
        Scenario(
            "idle-10000", "memory", "memory per idle keep-alive connection, 10,000", "hello", 10000
        ),
        Scenario("startup", "startup", "spawn to first served request", "hello"),
        Scenario(
            "sigterm", "sigterm", "SIGTERM to exit, 1,000 idle connections open", "hello", 1000
        ),
    )
}
QUICK = ("hello-64",)

STARTUP_REPEATS = 3
IDLE_OPEN_SECONDS = 120.0  # the idle client gives up opening after this long
SIGTERM_BOUND = 30.0  # SIGKILL after this long; reported as "killed"
STOP_BOUND = 10.0  # other stops: SIGKILL after this long
# Percent of the server's core that other processes took during a load run, above which the
# report flags the run: req/s is then low for a reason that is not the server's.
OTHER_LOAD_WARNING = 5.0
# Before each load run: wait up to QUIET_WAIT s for both cores to be less busy than this (a
# fraction of one core, the idle server included) over half a second.
QUIET_BUSY = 0.10
QUIET_WAIT = 10.0


@dataclass
class Measurement:
    scenario: str
    server: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""  # why values is empty, or what went wrong along the way


@dataclass
class Bench:
    """Where things are and how long to run them: everything a scenario run needs."""

    bench_dir: Path
    venv: Path
    log_dir: Path
    duration: float
    warmup: float
    server_core: int | None
    load_core: int | None
    source: Path | None = None  # a snapshot holding `trioserve/`, imported instead of the tree
    compiled: Path | None = None  # the same with its HTTP core compiled (trioserve-compiled)
    # The run's self-signed certificate for 127.0.0.1 and its key, for the TLS scenarios.
    certfile: Path | None = None
    keyfile: Path | None = None

    def start(
        self, server: Server, app: str, *, until_response: bool = False, tls: bool = False
    ) -> ServerProcess:
        """`server` serving `apps:APP`, ready; over HTTPS with `tls`."""
        certificate = None
        if tls:
            if self.certfile is None or self.keyfile is None:
                raise RuntimeError("a TLS scenario needs the run's certificate and key")
            certificate = (self.certfile, self.keyfile)
        port = 0 if server.notify else free_port()
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            # PYTHONPATH comes before the editable install's finder, so a snapshot wins.
            "PYTHONPATH": ":".join(
                str(p)
                for p in (self.compiled if server.compiled else self.source, self.bench_dir)
                if p
            ),
            "LANG": "C.UTF-8",
        }
        return start_server(
            server.name,
            server.argv(self.venv / "bin", f"apps:{app}", port, certificate),
            port=port,
            notify=server.notify,
            env=env,
            cwd=self.bench_dir,
            log_dir=self.log_dir,
            core=self.server_core,
            until_response=until_response,
            tls=tls,
        )

    def measure(self, scenario: Scenario, server: Server) -> Measurement:
        run = {
            "load": self._load,
            "memory": self._memory,
            "startup": self._startup,
            "sigterm": self._sigterm,
        }[scenario.kind]
        result = Measurement(scenario.name, server.name)
        try:
            run(scenario, server, result)
        except (StartError, _wrk.WrkError, OSError, RuntimeError) as exc:
            result.values.clear()
            result.note = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"  {server.name}: {exc}", file=sys.stderr, flush=True)
        return result

    def _wrk(self, proc: ServerProcess, scenario: Scenario, seconds: float) -> _wrk.WrkResult:
        script = self.bench_dir / scenario.script if scenario.script else None
        scheme = "https" if scenario.tls else "http"
        return _wrk.run(
            f"{scheme}://127.0.0.1:{proc.port}/",
            connections=scenario.connections,
            seconds=seconds,
            core=self.load_core,
            script=script,
        )

    def _load(self, scenario: Scenario, server: Server, result: Measurement) -> None:
        proc = self.start(server, scenario.app, tls=scenario.tls)
        try:
            if not request_ok(proc.port, tls=scenario.tls):
                raise RuntimeError("the server did not answer a first request with a 200")
            if self.server_core is not None and self.load_core is not None:
                cores = (self.server_core, self.load_core)
                waited = wait_until_quiet(cores, busy_below=QUIET_BUSY, within=QUIET_WAIT)
                if waited >= QUIET_WAIT:
                    result.note = f"machine not quiet after {QUIET_WAIT:g} s"
            if self.warmup > 0:
                self._wrk(proc, scenario, self.warmup)
            cpu_before = proc.cpu_seconds()
            busy_before = self._cores_busy()
            ours_before = _own_cpu_seconds()  # wrk and this harness, both on the load core
            wall_before = time.monotonic()
            wrk = self._wrk(proc, scenario, self.duration)
            cpu = proc.cpu_seconds() - cpu_before
            busy_after = self._cores_busy()
            server_busy = busy_after[0] - busy_before[0]
            load_busy = busy_after[1] - busy_before[1]
            ours = _own_cpu_seconds() - ours_before
            wall = time.monotonic() - wall_before
            if proc.proc.poll() is not None:
                result.note = f"exited with {proc.proc.returncode} during the run"
        finally:
            proc.terminate(STOP_BOUND)
        # What anything else took from either core, in percent of one core: on the server's
        # core it slows the server, on the load core it slows wrk; either lowers req/s.
        other = max(server_busy - cpu, load_busy - ours, 0.0) if self.load_core is not None else 0
        result.values.update(
            rps=wrk.rps,
            requests=wrk.requests,
            p50_ms=wrk.p50_ms,
            p99_ms=wrk.p99_ms,
            cpu_us=cpu * 1e6 / wrk.requests if wrk.requests else 0.0,
            errors=wrk.errors,
            non_2xx=wrk.non_2xx,
            other_pct=other * 100 / wall,
        )
        if result.values["other_pct"] > OTHER_LOAD_WARNING:
            result.note = "; ".join(
                filter(None, [result.note, "cores were shared: see other load"])
            )

    def _cores_busy(self) -> tuple[float, float]:
        if self.server_core is None or self.load_core is None:
            return 0.0, 0.0
        return core_busy_seconds(self.server_core), core_busy_seconds(self.load_core)

    def _memory(self, scenario: Scenario, server: Server, result: Measurement) -> None:
        proc = self.start(server, scenario.app)
        try:
            warm = Scenario("warmup", "load", "", scenario.app, 8)
            self._wrk(proc, warm, max(self.warmup, 1.0))
            time.sleep(1.0)  # let the allocator settle after the warmup's last responses
            before = proc.rss_kib()
            with IdleClient(self, proc.port, scenario.connections) as client:
                opened, open_seconds = client.opened, client.open_seconds
                time.sleep(1.0)  # the server's last accepts and reads settle
                after = proc.rss_kib()
                alive = client.alive()
        finally:
            proc.terminate(STOP_BOUND)
        if alive == 0:
            raise RuntimeError(f"no idle connection survived ({opened} opened)")
        if alive < scenario.connections:
            result.note = f"held {alive} of {scenario.connections}"
        result.values.update(
            held=alive,
            rss_before_kib=before,
            rss_after_kib=after,
            kib_per_conn=(after - before) / alive,
            open_seconds=open_seconds,
        )

    def _startup(self, scenario: Scenario, server: Server, result: Measurement) -> None:
        times = []
        for _ in range(STARTUP_REPEATS):
            proc = self.start(server, scenario.app, until_response=True)
            times.append(time.monotonic() - proc.started_at)
            proc.terminate(STOP_BOUND)
        result.values.update(seconds=statistics.median(times), best=min(times))

    def _sigterm(self, scenario: Scenario, server: Server, result: Measurement) -> None:
        proc = self.start(server, scenario.app)
        try:
            with IdleClient(self, proc.port, scenario.connections) as client:
                if client.opened < scenario.connections:
                    result.note = f"only {client.opened} idle connections opened"
                seconds, code = proc.terminate(SIGTERM_BOUND)
        finally:
            proc.kill()
        result.values.update(seconds=seconds, exit_code=-9 if code is None else code)
        if code is not None and code < 0:
            result.note = f"ended by signal {-code}: no drain of its own, or re-raised after one"
        if code is None:
            result.note = f"still running {SIGTERM_BOUND:g} s after SIGTERM: killed"
            print(f"  {server.name} log:\n{proc.log_tail()}", file=sys.stderr, flush=True)


def _own_cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (wrk among them)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class IdleClient:
    """idle_client.py in its own process: opens the connections on entry, closes them on exit."""

    def __init__(self, bench: Bench, port: int, count: int) -> None:
        command = [
            sys.executable,
            str(bench.bench_dir / "idle_client.py"),
            str(port),
            str(count),
            str(IDLE_OPEN_SECONDS),
        ]
        if bench.load_core is not None:
            command = ["taskset", "-c", str(bench.load_core), *command]
        self.command = command
        self.opened = 0
        self.open_seconds = 0.0

    def __enter__(self) -> IdleClient:
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        words = self._line(IDLE_OPEN_SECONDS + 30).split()
        if len(words) != 3 or words[0] != "open":
            self.__exit__()
            raise RuntimeError(f"idle client said {' '.join(words)!r}")
        self.opened, self.open_seconds = int(words[1]), float(words[2])
        return self

    def alive(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"check\n")
        words = self._line(60).split()
        return int(words[1]) if len(words) == 2 and words[0] == "alive" else 0

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return "timeout"
        return self.proc.stdout.readline().decode(errors="replace").strip()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
