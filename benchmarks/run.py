#!/usr/bin/env python3
"""Benchmark trioserve against its peers, side by side, in one run on this machine.

    python3 benchmarks/run.py                  # every scenario, every server (~10 minutes)
    python3 benchmarks/run.py --quick          # hello world at 64 connections, every server
    python3 benchmarks/run.py --servers trioserve,uvicorn-h11 --scenarios hello-64,stream-64

Needs Linux (it reads /proc), `taskset` and wrk (Debian package `wrk`; installed with apt-get
when missing and running as root). The peers run from `benchmarks/.venv-peers`, built on first
use. Results: a markdown table on stdout and in `benchmarks/results/DATE-SET.md` (with the raw
numbers beside it as JSON), and a PNG chart. See benchmarks/README.md for what each scenario
means and how to read the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import _report
import _wrk
from _peers import SERVERS, ensure_venv, installed_versions
from _process import StartError
from _scenarios import OTHER_LOAD_WARNING, QUICK, SCENARIOS, Bench, Measurement

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV = BENCH_DIR / ".venv-peers"
RESULTS = BENCH_DIR / "results"
DOCS_CHART = REPO / "docs" / "performance.png"
FD_NEEDED = 10_000 + 512  # the largest idle scenario, plus the server's own descriptors

# The figure each kind of scenario is judged by, for picking the best round.
_PRIMARY = {"load": "rps", "memory": "kib_per_conn", "startup": "seconds", "sigterm": "seconds"}


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only: " + ", ".join(QUICK))
    parser.add_argument(
        "--servers", help="comma-separated subset of: " + ", ".join(SERVERS), default=""
    )
    parser.add_argument(
        "--scenarios", help="comma-separated subset of: " + ", ".join(SCENARIOS), default=""
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warmup load")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat each measurement; the best round counts"
    )
    parser.add_argument("--chart", type=Path, help="PNG to draw (default: see README)")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--rebuild-venv", action="store_true", help="recreate .venv-peers")
    parser.add_argument(
        "--rev",
        help="measure trioserve as committed at this git revision (e.g. HEAD) rather than the "
        "working tree, which may change under a long run",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 5 or not 0.5 <= args.duration <= 60 or not 0 <= args.warmup <= 10:
        parser.error("keep --rounds in 1-5, --duration in 0.5-60 s, --warmup in 0-10 s")
    return args


def _choose(given: str, known: dict[str, object], default: list[str], what: str) -> list[str]:
    if not given:
        return default
    chosen = [item.strip() for item in given.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return [item for item in known if item in chosen]  # canonical order


def _ensure_tools() -> None:
    if not Path("/proc/self/stat").exists() or shutil.which("taskset") is None:
        raise SystemExit("run.py needs Linux with /proc and taskset (util-linux)")
    if shutil.which("wrk") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(install, env=env, check=False)
    _wrk.require_wrk()


def _cores() -> tuple[int | None, int | None]:
    """(server core, load core): 0 and 1 when both are ours; no pinning otherwise."""
    usable = os.sched_getaffinity(0)
    if {0, 1} <= usable:
        os.sched_setaffinity(0, {1})  # the harness itself stays off the server's core
        return 0, 1
    print("warning: cores 0 and 1 are not both usable; running unpinned", file=sys.stderr)
    return None, None


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_NEEDED if hard == resource.RLIM_INFINITY else min(max(soft, FD_NEEDED), hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < FD_NEEDED:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} < {FD_NEEDED}", file=sys.stderr)


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores, Linux {os.uname().release}"


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _git_revision(rev: str | None) -> str:
    if rev:
        return "trioserve as committed at " + _git("rev-parse", "--short", rev)
    revision = "the working tree at " + (_git("rev-parse", "--short", "HEAD") or "unknown")
    return revision + (
        " + uncommitted changes" if _git("status", "--porcelain", "trioserve") else ""
    )


def _snapshot(rev: str, into: Path) -> Path:
    """`trioserve/` as committed at `rev`, extracted under `into`."""
    if not _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"):
        raise SystemExit(f"--rev {rev}: not a commit in this repository")
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "trioserve"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _compile(source: Path | None, into: Path) -> Path:
    """A copy of `trioserve/` (the snapshot, else the tree) with its HTTP core built by mypyc.

    The same build as `TRIOSERVE_COMPILE=1 pip install .` (setup.py), done in place in a copy.
    """
    into.mkdir()
    shutil.copytree((source or REPO) / "trioserve", into / "trioserve")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, into / name)
    subprocess.run(
        [str(VENV / "bin" / "python"), "setup.py", "-q", "build_ext", "--inplace"],
        cwd=into,
        env={**os.environ, "TRIOSERVE_COMPILE": "1"},
        check=True,
        capture_output=True,
    )
    return into


def _certificate(into: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (ECDSA P-256, valid one day), made with
    the openssl command line for the TLS scenarios. wrk does not verify it. The key is PKCS#8,
    as `openssl req -newkey` writes it, which is what granian requires."""
    certfile, keyfile = into / "cert.pem", into / "key.pem"
    command = [
        "openssl", "req", "-x509",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(keyfile), "-out", str(certfile),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return certfile, keyfile


def _probe_trioserve(bench: Bench, *, tls: bool) -> str:
    """'' if trioserve starts and answers (over TLS with `tls`); otherwise why not (it is then
    left out)."""
    try:
        bench.start(SERVERS["trioserve"], "hello", until_response=True, tls=tls).terminate(10)
    except (StartError, OSError, RuntimeError) as exc:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return ""


def _best_round(rounds: list[Measurement], kind: str) -> Measurement:
    """The best of the rounds, as `timeit` takes the fastest: on a shared machine noise only
    ever makes a figure worse, so the best round is the closest to what the server can do."""
    measured = [m for m in rounds if m.values]
    if not measured:
        return rounds[-1]
    key = _PRIMARY[kind]
    if key == "rps":
        chosen = max(measured, key=lambda m: m.values[key])
    else:
        chosen = min(measured, key=lambda m: m.values[key])
    if len(rounds) > 1:
        spread = ", ".join(f"{m.values[key]:,.4g}" for m in rounds if m.values)
        chosen.note = "; ".join(filter(None, [chosen.note, f"rounds: {spread}"]))
    return chosen


def _preamble(
    args: argparse.Namespace,
    set_name: str,
    versions: dict[str, str],
    notes: list[str],
    tls: bool,
) -> str:
    command = " ".join(["python3 benchmarks/run.py", *sys.argv[1:]])
    shown = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
    lines = [
        f"Scenario set `{set_name}`, produced by `{command}`, measuring "
        f"{_git_revision(args.rev)}.",
        "",
        f"- Machine: {_machine()}. Machines like this drift by up to 30% over minutes: compare "
        "ratios within one run, not absolute numbers across runs.",
        f"- Versions: {shown}; wrk {_wrk_version()}.",
        f"- Method: each server is one process with one worker, pinned to core 0 with `taskset`; "
        f"wrk (one thread) and the idle-connection client are pinned to core 1. Load runs: "
        f"{args.warmup:g} s warmup, then {args.duration:g} s measured, keep-alive, loopback; "
        f"{args.rounds} round(s), the best round is shown. CPU per request is the server's "
        "utime+stime over the measured run (from /proc) divided by the requests wrk counted. "
        "Other load is the most that anything else took from either core meanwhile (from "
        "/proc/stat, less the server's CPU time on core 0 and wrk's on core 1); above "
        f"{OTHER_LOAD_WARNING:g}% of a core the run is flagged, as its req/s is then low for "
        "a reason that is not the server's (CPU per request holds up better), and measured "
        "once more. "
        "Access logs off, log level warning, idle timeouts raised to 300 s; otherwise defaults.",
    ]
    if tls:
        lines.append(
            "- TLS scenarios: every server that serves HTTPS gets the same key and self-signed "
            "certificate for 127.0.0.1 (ECDSA P-256, made with openssl for this run) and keeps "
            "its own TLS defaults; wrk connects with an `https://` URL and does not verify the "
            f"certificate ({_openssl_version()}). Keep-alive: each connection does one handshake."
        )
    lines += [f"- Note: {note}" for note in notes]
    return "\n".join(lines)


def _openssl_version() -> str:
    done = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "openssl version unknown"


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    words = (done.stdout + done.stderr).split()
    return words[1] if len(words) > 1 else "unknown"


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    _ensure_tools()
    server_core, load_core = _cores()
    _raise_fd_limit()
    missing = ensure_venv(VENV, REPO, rebuild=args.rebuild_venv)

    servers = _choose(args.servers, dict(SERVERS), list(SERVERS), "servers")
    scenarios = _choose(
        args.scenarios, dict(SCENARIOS), list(QUICK if args.quick else SCENARIOS), "scenarios"
    )
    if args.quick and not args.servers and not args.scenarios:
        set_name = "quick"
    elif scenarios == list(SCENARIOS) and servers == list(SERVERS):
        set_name = "full"
    else:
        set_name = "custom"

    notes = []
    for pin in missing:
        name = pin.split("==")[0]
        notes.append(f"{pin} did not install here, so it is not in this run.")
        servers = [s for s in servers if SERVERS[s].package != name]

    with tempfile.TemporaryDirectory(prefix="trioserve-bench-") as log_dir:
        bench = Bench(
            bench_dir=BENCH_DIR,
            venv=VENV,
            log_dir=Path(log_dir),
            duration=args.duration,
            warmup=args.warmup,
            server_core=server_core,
            load_core=load_core,
            source=_snapshot(args.rev, Path(log_dir) / "src") if args.rev else None,
        )
        if "trioserve-compiled" in servers:
            try:
                bench.compiled = _compile(bench.source, Path(log_dir) / "compiled")
            except subprocess.CalledProcessError as exc:
                why = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
                print(f"could not build trioserve-compiled, left out: {why}", file=sys.stderr)
                notes.append("trioserve-compiled could not be built (mypyc); left out.")
                servers.remove("trioserve-compiled")
        if any(SCENARIOS[name].tls for name in scenarios):
            try:
                bench.certfile, bench.keyfile = _certificate(Path(log_dir))
            except (OSError, subprocess.CalledProcessError) as exc:
                stderr = getattr(exc, "stderr", None) or b""
                why = stderr.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
                print(f"could not make a TLS certificate, TLS scenarios left out: {why[0]}")
                notes.append("openssl could not make a certificate; TLS scenarios left out.")
                scenarios = [name for name in scenarios if not SCENARIOS[name].tls]
        if "trioserve" in servers:
            # Probe as the run will serve: plain HTTP, TLS, or both.
            modes = sorted({SCENARIOS[name].tls for name in scenarios})
            why = next(filter(None, (_probe_trioserve(bench, tls=tls) for tls in modes)), "")
            if why:
                print(f"trioserve is not runnable, left out: {why}", file=sys.stderr)
                notes.append(f"trioserve could not be started ({why}); peers only.")
                servers.remove("trioserve")
        if not servers:
            raise SystemExit("no server to measure")
        if not any(
            SERVERS[server].serves(
                SCENARIOS[name].kind, SCENARIOS[name].app, tls=SCENARIOS[name].tls
            )
            for server in servers
            for name in scenarios
        ):
            raise SystemExit("none of the selected servers serves any of the selected scenarios")

        results: dict[str, dict[str, Measurement]] = {}
        for name in scenarios:
            scenario = SCENARIOS[name]
            # A reference such as trio-limit serves one app under load without TLS only:
            # elsewhere it is left out, not measured, and the report and chart show nothing
            # for it.
            serving = [
                s
                for s in servers
                if SERVERS[s].serves(scenario.kind, scenario.app, tls=scenario.tls)
            ]
            if not serving:
                print(f"== {name}: no selected server serves it, skipped", flush=True)
                continue
            print(f"== {name}: {scenario.title}", flush=True)
            for server_name in servers:
                if server_name not in serving:
                    print(f"  {server_name}: not measured (it cannot serve {name})", flush=True)
            table = results.setdefault(name, {})
            # Rounds are interleaved (every server once, then again) so that a slow minute of
            # the machine hits every server rather than all rounds of one.
            rounds: dict[str, list[Measurement]] = {server_name: [] for server_name in serving}
            for _ in range(args.rounds):
                for server_name in serving:
                    measured = bench.measure(scenario, SERVERS[server_name])
                    rounds[server_name].append(measured)
                    if measured.values.get("other_pct", 0.0) > OTHER_LOAD_WARNING:
                        # Something else took a core: once more (the better round counts).
                        print(f"  {server_name}: a core was shared, measuring again", flush=True)
                        rounds[server_name].append(bench.measure(scenario, SERVERS[server_name]))
            for server_name in serving:
                table[server_name] = _best_round(rounds[server_name], scenario.kind)
                shown = ", ".join(f"{k}={v:,.4g}" for k, v in table[server_name].values.items())
                print(f"  {server_name}: {shown or table[server_name].note}", flush=True)

    versions = installed_versions(VENV)
    today = datetime.date.today().isoformat()
    title = f"trioserve and its peers, {today} ({set_name})"
    report = _report.render(
        results,
        servers,
        title=title,
        preamble=_preamble(
            args, set_name, versions, notes, any(SCENARIOS[name].tls for name in results)
        ),
    )
    print("\n" + report)

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{today}-{set_name}"
    stem.with_suffix(".md").write_text(report)
    raw = {
        "title": title,
        "command": " ".join(["python3 benchmarks/run.py", *argv]),
        "versions": versions,
        "notes": notes,
        "scenarios": [
            {
                "name": name,
                "kind": SCENARIOS[name].kind,
                "title": SCENARIOS[name].title,
                "measurements": [
                    {**asdict(m), "title": SERVERS[m.server].title} for m in table.values()
                ],
            }
            for name, table in results.items()
        ],
    }
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    if not args.no_chart:
        chart = args.chart or (DOCS_CHART if set_name == "full" else stem.with_suffix(".png"))
        python = VENV / "bin" / "python"
        drawn = subprocess.run(
            [str(python), str(BENCH_DIR / "chart.py"), str(stem.with_suffix(".json")), str(chart)],
            check=False,
        )
        if drawn.returncode == 0:
            written.append(chart)
    print("wrote " + ", ".join(os.path.relpath(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
