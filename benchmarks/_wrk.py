"""Running wrk (Debian package `wrk`, 4.1) and reading what it prints.

wrk runs one thread pinned to the load core, for a fixed duration, with `--latency` so that its
output carries the percentile table this module reads p50 and p99 from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkError", "WrkResult", "parse", "require_wrk", "run"]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


class WrkError(Exception):
    """wrk failed, or printed something this module cannot read."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # connect + read + write + timeout socket errors
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian package 'wrk')")
    return path


def _ms(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def parse(output: str) -> WrkResult:
    total = re.search(r"(\d+) requests in " + _TIME, output)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+" + _TIME, output, re.MULTILINE)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+" + _TIME, output, re.MULTILINE)
    if total is None or p50 is None or p99 is None:
        raise WrkError("unexpected wrk output:\n" + output)
    errors = 0
    socket_errors = re.search(r"Socket errors:(.*)", output)
    if socket_errors:
        errors = sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1e3,
        p50_ms=_ms(p50.group(1), p50.group(2)),
        p99_ms=_ms(p99.group(1), p99.group(2)),
        errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    core: int | None,
    script: Path | None = None,
) -> WrkResult:
    command = [
        require_wrk(),
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{seconds:g}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    if script is not None:
        command += ["--script", str(script)]
    command.append(url)
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {seconds + 30:g}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse(done.stdout)
