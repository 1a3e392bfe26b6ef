"""The results as markdown: one table per scenario, the ratios, and issue 7's targets.

Ratios are always trioserve against a peer from the same run, written `trioserve ÷ peer`:
for throughput above 1.00x means trioserve is faster; for latency, CPU, memory and times (where
less is better) below 1.00x means trioserve is better. Each table says which way it reads.

`trio-limit` is a reference rather than a peer: trio's streams with a canned reply (see
`trio_limit.py`), measured in the plain (not TLS) hello load scenarios only. Its column and its
own section say how close trioserve gets to that line; issue 7's targets are never checked
against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from _peers import SERVERS
from _scenarios import SCENARIOS, Measurement, Scenario

__all__ = ["render"]

SUBJECT = "trioserve"
LIMIT = "trio-limit"  # the reference: no HTTP, no ASGI, not a peer

Table = dict[str, Measurement]
_LABELS = {
    "rps": "req/s",
    "kib_per_conn": "KiB/conn",
    "seconds": "seconds",
}  # server name -> its measurement in one scenario


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    align = [
        "---" if i < right_from or name == "note" else "---:" for i, name in enumerate(header)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _value(table: Table, server: str, key: str) -> float | None:
    measurement = table.get(server)
    return measurement.values.get(key) if measurement else None


def _title(server: str) -> str:
    return SERVERS[server].title if server in SERVERS else server


def _scenario_table(scenario: Scenario, table: Table, servers: Sequence[str]) -> str:
    ours = SUBJECT in table and bool(table[SUBJECT].values)
    rows = []
    if scenario.kind == "load":
        header = ["server", "req/s", "p50 ms", "p99 ms", "CPU us/req", "errors", "other load"]
        key = "rps"
        formats: list[Callable[[dict[str, float]], str]] = [
            lambda v: _num(v["rps"]),
            lambda v: _ms(v["p50_ms"]),
            lambda v: _ms(v["p99_ms"]),
            lambda v: _num(v["cpu_us"], 1),
            lambda v: _num(v["errors"] + v["non_2xx"]),
            lambda v: f"{v.get('other_pct', 0):.0f}%",
        ]
    elif scenario.kind == "memory":
        header = ["server", "held", "RSS before KiB", "RSS after KiB", "KiB/conn", "open s"]
        key = "kib_per_conn"
        formats = [
            lambda v: _num(v["held"]),
            lambda v: _num(v["rss_before_kib"]),
            lambda v: _num(v["rss_after_kib"]),
            lambda v: _num(v["kib_per_conn"], 2),
            lambda v: _num(v["open_seconds"], 1),
        ]
    elif scenario.kind == "startup":
        header = ["server", "median s", "best s"]
        key = "seconds"
        formats = [lambda v: _num(v["seconds"], 3), lambda v: _num(v["best"], 3)]
    else:
        header = ["server", "seconds", "exit code"]
        key = "seconds"
        formats = [lambda v: _num(v["seconds"], 3), lambda v: _num(v["exit_code"])]
    if ours:
        header.append(f"trioserve ÷ server ({_LABELS[key]})")
    header.append("note")
    for server in servers:
        measurement = table.get(server)
        if measurement is None:
            continue
        if measurement.values:
            cells = [fmt(measurement.values) for fmt in formats]
        else:
            cells = ["-"] * len(formats)
        if ours:
            ratio = _ratio(_value(table, SUBJECT, key), _value(table, server, key))
            cells.append("" if server == SUBJECT else ratio)
        rows.append([_title(server), *cells, measurement.note.replace("|", "/")])
    return _table(header, rows)


def _ratio_matrix(results: dict[str, Table], peers: Sequence[str]) -> str:
    header = ["scenario (trioserve ÷ peer)", *[_title(peer) for peer in peers]]
    rows = []
    for name, table in results.items():
        scenario = SCENARIOS[name]
        if scenario.kind == "load":
            lines = [("req/s", "rps"), ("p99", "p99_ms"), ("CPU/req", "cpu_us")]
        elif scenario.kind == "memory":
            lines = [("KiB/conn", "kib_per_conn")]
        else:
            lines = [("seconds", "seconds")]
        for label, key in lines:
            ours = _value(table, SUBJECT, key)
            cells = [_ratio(ours, _value(table, peer, key)) for peer in peers]
            rows.append([f"{name}: {label}", *cells])
    return _table(header, rows)


def _limit_table(results: dict[str, Table]) -> str | None:
    """trioserve against the trio limit, in each scenario that measured both; None if none."""
    rows = []
    for name, table in results.items():
        ours, limit = table.get(SUBJECT), table.get(LIMIT)
        if ours is None or limit is None or not ours.values or not limit.values:
            continue
        mine, ceiling = ours.values, limit.values
        rows.append(
            [
                name,
                _num(mine["rps"]),
                _num(ceiling["rps"]),
                _ratio(mine["rps"], ceiling["rps"]),
                _num(mine["cpu_us"], 1),
                _num(ceiling["cpu_us"], 1),
                _num(mine["cpu_us"] - ceiling["cpu_us"], 1),
            ]
        )
    if not rows:
        return None
    header = [
        "scenario",
        "trioserve req/s",
        "trio limit req/s",
        "trioserve ÷ limit",
        "trioserve CPU us/req",
        "trio limit CPU us/req",
        "difference us/req",
    ]
    return _table(header, rows)


def _targets(results: dict[str, Table]) -> str:
    """Issue 7's targets for the default install, each checked against this run."""

    def ratio(scenario: str, peer: str, key: str) -> float | None:
        table = results.get(scenario, {})
        ours, theirs = _value(table, SUBJECT, key), _value(table, peer, key)
        return ours / theirs if ours is not None and theirs else None

    def check(value: float | None, ok: Callable[[float], bool], shown: str) -> list[str]:
        if value is None:
            return ["not measured", ""]
        return [shown.format(value), "yes" if ok(value) else "**no**"]

    idle = results.get("idle-10000", {})
    checks: list[tuple[str, float | None, Callable[[float], bool], str]] = [
        (
            "hello-64: req/s ≥ 5x hypercorn (trio)",
            ratio("hello-64", "hypercorn-trio", "rps"),
            lambda r: r >= 5,
            "{:.2f}x",
        ),
        (
            "hello-64: req/s ≥ 1.3x uvicorn (h11)",
            ratio("hello-64", "uvicorn-h11", "rps"),
            lambda r: r >= 1.3,
            "{:.2f}x",
        ),
        (
            "hello-256: p99 ≤ uvicorn (h11)'s",
            ratio("hello-256", "uvicorn-h11", "p99_ms"),
            lambda r: r <= 1,
            "{:.2f}x",
        ),
        (
            "stream-64: req/s ≥ 2x uvicorn (h11)",
            ratio("stream-64", "uvicorn-h11", "rps"),
            lambda r: r >= 2,
            "{:.2f}x",
        ),
        (
            "big-64: req/s ≥ 1.2x uvicorn (h11)",
            ratio("big-64", "uvicorn-h11", "rps"),
            lambda r: r >= 1.2,
            "{:.2f}x",
        ),
        (
            "idle-10000: ≤ 6 KiB per idle connection",
            _value(idle, SUBJECT, "kib_per_conn"),
            lambda k: k <= 6,
            "{:.2f} KiB",
        ),
        (
            "idle-10000: all 10,000 held by one worker",
            _value(idle, SUBJECT, "held"),
            lambda n: n >= 10000,
            "{:,.0f}",
        ),
    ]
    rows = [[label, *check(value, ok, shown)] for label, value, ok, shown in checks]
    return _table(["target (issue 7, default install)", "this run", "met"], rows, right_from=3)


def render(
    results: dict[str, Table],
    servers: Sequence[str],
    *,
    title: str,
    preamble: str,
) -> str:
    """The whole report: preamble, one section per scenario, ratios, targets."""
    parts = [f"# {title}", preamble]
    for name, table in results.items():
        scenario = SCENARIOS[name]
        parts += [f"## {name}: {scenario.title}", _scenario_table(scenario, table, servers)]
    peers = [server for server in servers if server != SUBJECT]
    has_subject = any(SUBJECT in table and table[SUBJECT].values for table in results.values())
    if has_subject and peers:
        explained = (
            "req/s above 1.00x: trioserve is faster. p99, CPU/req, KiB/conn and seconds "
            "below 1.00x: trioserve is better."
        )
        if LIMIT in peers:
            explained += (
                f" The {_title(LIMIT)} column is not a peer but a reference, measured for "
                "hello world only: its req/s ratio is how close trioserve gets to the trio limit."
            )
        parts += ["## Ratios: trioserve ÷ peer, same run", explained]
        parts.append(_ratio_matrix(results, peers))
        limit = _limit_table(results)
        if limit is not None:
            parts += [
                "## How close trioserve gets to the trio limit",
                "The trio limit is trio's streams (`SocketStream.receive_some` and `send_all`) "
                "answering each request head with the same bytes trioserve sends for hello "
                "world, with no HTTP parser and no ASGI: the ceiling for any HTTP server written "
                "on trio's streams on this machine. trioserve reads and writes its sockets with "
                "trio's low-level calls, which skip the scheduler pass the streams take after "
                "each successful read and write, so this line is not a strict ceiling for "
                "trioserve itself, and the gap to it understates what HTTP and ASGI cost. "
                "The last column is trioserve's CPU per request less the limit's.",
                limit,
            ]
        parts += ["## Issue 7's targets, checked against this run", _targets(results)]
    elif not has_subject:
        parts.append("trioserve was not measured in this run, so there are no ratios.")
    return "\n\n".join(parts) + "\n"
