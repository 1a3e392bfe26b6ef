"""The --listen grammar, as tables: good specs to values, bad specs to their one-line error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trioserve import FdSpec, ListenSpec, SpecError, TcpSpec, UnixSpec, parse_listen
from trioserve._spec import FORMS, OPTIONS, Form, forms_markdown, options_markdown

GOOD: list[tuple[str, ListenSpec]] = [
    ("127.0.0.1:8000", TcpSpec("127.0.0.1", 8000)),
    ("0.0.0.0:80", TcpSpec("0.0.0.0", 80)),
    ("localhost:0", TcpSpec("localhost", 0)),
    ("tcp:localhost:8000", TcpSpec("localhost", 8000)),
    ("tcp://127.0.0.1:1", TcpSpec("127.0.0.1", 1)),
    ("example.com.:443", TcpSpec("example.com.", 443)),
    ("[::1]:8000", TcpSpec("::1", 8000)),
    ("[::]:8080?v6only=0", TcpSpec("::", 8080, v6only=False)),
    ("[::ffff:127.0.0.1]:80?v6only=0", TcpSpec("::ffff:127.0.0.1", 80, v6only=False)),
    ("[fe80::1%eth0]:80", TcpSpec("fe80::1%eth0", 80)),
    ("tcp:[2001:db8::1]:65535", TcpSpec("2001:db8::1", 65535)),
    (":8000", TcpSpec(None, 8000)),
    ("*:0", TcpSpec(None, 0)),
    (":80?v6only=1&backlog=128", TcpSpec(None, 80, v6only=True, backlog=128)),
    ("localhost:80?v6only=0", TcpSpec("localhost", 80, v6only=False)),
    ("127.0.0.1:80?backlog=65535", TcpSpec("127.0.0.1", 80, backlog=65535)),
    ("unix:/run/app/http.sock", UnixSpec("/run/app/http.sock")),
    ("unix:relative.sock", UnixSpec("relative.sock")),
    ("unix:/run/x.sock?mode=0660", UnixSpec("/run/x.sock", mode=0o660)),
    ("unix:/run/x.sock?mode=666", UnixSpec("/run/x.sock", mode=0o666)),
    (
        "unix:/run/x.sock?owner=www-data&group=1000&backlog=5",
        UnixSpec("/run/x.sock", owner="www-data", group="1000", backlog=5),
    ),
    ("unix:@app-http", UnixSpec("@app-http")),
    ("unix:@x?backlog=1", UnixSpec("@x", backlog=1)),
    ("unix:/" + "a" * 106, UnixSpec("/" + "a" * 106)),
    ("unix:@" + "a" * 107, UnixSpec("@" + "a" * 107)),
    ("fd:3", FdSpec(fd=3)),
    ("fd:0", FdSpec(fd=0)),
    ("fd://4", FdSpec(fd=4)),
    ("fd:http", FdSpec(name="http")),
    ("fd://https", FdSpec(name="https")),
    ("fd:*", FdSpec()),
    ("fd:unknown", FdSpec(name="unknown")),
    ("fd:web app.socket", FdSpec(name="web app.socket")),
]

BAD: list[tuple[str, str]] = [
    ("", "empty spec"),
    (" :80", "has leading or trailing spaces, or control characters"),
    ("unix:/x\n", "has leading or trailing spaces, or control characters"),
    ("8000", "missing host; use :8000 for every interface or 127.0.0.1:8000 for loopback"),
    ("localhost", "missing ':PORT'"),
    ("127.0.0.1:", "missing port after ':'"),
    ("127.0.0.1:http", "port 'http' is not a number"),
    ("127.0.0.1:-1", "port '-1' is not a number"),
    ("127.0.0.1:65536", "port 65536 is out of range (0-65535)"),
    ("127.0.0.1:0000080", "port 0000080 is out of range (0-65535)"),
    ("127.0.0.256:80", "'127.0.0.256' is not an IPv4 address"),
    ("bad_host!:80", "'bad_host!' is not a host name or an IP address"),
    ("-bad.example:80", "'-bad.example' is not a host name or an IP address"),
    ("::1:80", "an IPv6 address needs brackets, as in [::1]:8000"),
    ("[::1:80", "missing ']' after the IPv6 address"),
    ("[::1]80", "missing ':PORT' after ']'"),
    ("[]:80", "empty IPv6 address in []"),
    ("[127.0.0.1]:80", "brackets are for IPv6 addresses; write 127.0.0.1:PORT"),
    ("[nope]:80", "'nope' is not an IPv6 address"),
    ("http://127.0.0.1:80", "unknown kind 'http': use HOST:PORT, unix:PATH or fd:N"),
    ("127.0.0.1:80?", "nothing after '?'"),
    ("127.0.0.1:80?mode=0660", "option mode applies to unix only, not tcp"),
    ("127.0.0.1:80?v6only=0", "option v6only does not apply to the IPv4 address 127.0.0.1"),
    ("[::ffff:127.0.0.1]:80", "the IPv4-mapped address ::ffff:127.0.0.1 takes IPv4 traffic, so"),
    ("[::1]:80?v6only=yes", "v6only=yes must be 0 or 1"),
    ("[::1]:80?v6only", "option v6only needs a value (0 or 1)"),
    ("[::1]:80?v6only=", "option v6only needs a value (0 or 1)"),
    ("[::1]:80?v6only=0&v6only=1", "option v6only is given twice"),
    ("[::1]:80?reuseport=1", "unknown option 'reuseport' (options for tcp: v6only, backlog, tls)"),
    ("[::1]:80?backlog=0", "backlog=0 must be a whole number from 1 to 65535"),
    ("[::1]:80?backlog=65536", "backlog=65536 must be a whole number from 1 to 65535"),
    ("unix:", "missing path after unix:"),
    ("unix:@", "missing name after unix:@"),
    ("unix:/" + "a" * 107, "unix socket path is 108 bytes; the kernel takes at most 107"),
    ("unix:@" + "a" * 108, "unix socket path is 108 bytes; the kernel takes at most 107"),
    ("unix:/x?v6only=1", "option v6only applies to tcp only, not unix"),
    ("unix:/x?mode=8", "mode=8 must be octal permission bits such as 0660 (at most 0777)"),
    ("unix:/x?mode=0o660", "mode=0o660 must be octal permission bits such as 0660 (at most 0777)"),
    ("unix:/x?mode=4755", "mode=4755 must be octal permission bits such as 0660 (at most 0777)"),
    ("unix:/x?owner=a%20b", "owner=a%20b must be a user or group name or a numeric id"),
    (
        "unix:/x?user=root",
        "unknown option 'user' (options for unix: backlog, mode, owner, group, tls)",
    ),
    ("unix:@x?mode=0600", "option mode does not apply to an abstract socket (it has no file)"),
    ("unix:@x?group=www", "option group does not apply to an abstract socket (it has no file)"),
    ("fd:", "missing fd number or name after fd:"),
    ("fd://", "missing fd number or name after fd:"),
    ("fd:-1", "fd -1 is negative"),
    ("fd:9999999999", "fd 9999999999 is too large"),
    ("fd:a:b", "an fd name is 1 to 255 printable characters without ':'"),
    ("fd:3?backlog=1", "option backlog does not apply to fd: (inherited sockets are used as they"),
    ("fd:http?v6only=1", "option v6only does not apply to fd:"),
    ("fd:*?x=1", "unknown option 'x' (options for fd: tls)"),
]


@pytest.mark.parametrize(("spec", "expected"), GOOD)
def test_good_specs_parse_to_values(spec: str, expected: ListenSpec) -> None:
    assert parse_listen(spec) == expected


@pytest.mark.parametrize(("spec", "expected"), GOOD)
def test_str_of_a_spec_parses_back_to_it(spec: str, expected: ListenSpec) -> None:
    assert parse_listen(str(expected)) == expected


@pytest.mark.parametrize(("spec", "problem"), BAD)
def test_bad_specs_raise_one_line_naming_spec_and_problem(spec: str, problem: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_listen(spec)
    message = str(caught.value)
    assert message.startswith(f"listen spec {spec!r}: {problem}")
    assert "\n" not in message


def test_specs_are_frozen_and_hashable() -> None:
    spec = parse_listen("[::1]:80?v6only=0")
    with pytest.raises(AttributeError):
        spec.port = 81  # type: ignore[misc,union-attr]
    assert len({spec, parse_listen("[::1]:80?v6only=0")}) == 1


def test_fd_spec_cannot_select_by_number_and_name() -> None:
    with pytest.raises(ValueError, match="not both"):
        FdSpec(fd=3, name="http")


def test_listen_spec_union_is_usable_at_runtime() -> None:
    assert isinstance(parse_listen("fd:*"), ListenSpec)


@pytest.mark.parametrize("form", FORMS, ids=[f.syntax for f in FORMS])
def test_every_documented_form_example_parses_to_its_kind(form: Form) -> None:
    kinds = {"tcp": TcpSpec, "unix": UnixSpec, "fd": FdSpec}
    assert isinstance(parse_listen(form.example), kinds[form.kind])


# ---- the docs are generated from the same tables ------------------------------------------------

LISTEN_MD = Path(__file__).parent.parent / "docs" / "listen.md"


def _generated_block(text: str, name: str) -> str:
    found = re.search(f"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert found, f"docs/listen.md has no {name} block"
    return found.group(1)


def test_docs_options_table_is_the_parsers_table() -> None:
    text = LISTEN_MD.read_text()
    assert _generated_block(text, "options") == options_markdown(), (
        "docs/listen.md is out of date: paste trioserve._spec.options_markdown() between the "
        "options markers"
    )
    for option in OPTIONS:
        assert f"`{option.key}`" in text


def test_docs_forms_table_is_the_parsers_table() -> None:
    text = LISTEN_MD.read_text()
    assert _generated_block(text, "forms") == forms_markdown(), (
        "docs/listen.md is out of date: paste trioserve._spec.forms_markdown() between the "
        "forms markers"
    )
