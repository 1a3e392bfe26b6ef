"""The embedded demo app: it says which listener a request came in on.

`trioserve trioserve.demo:app --listen ...` shows socket activation working: each response
names the listener's kind, address and, for an inherited fd, its LISTEN_FDNAMES name.
"""

from __future__ import annotations

import json
import os

from ._asgi_types import ASGIReceive, ASGISend, Scope

__all__ = ["app"]


async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        raise RuntimeError(f"the demo app serves http, not {scope['type']!r}")
    more = True
    while more:  # read and drop any request body, so keep-alive works after a POST
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    listener = dict(scope.get("extensions", {}).get("trioserve.listener", {}))
    client = scope.get("client")
    info = {
        "message": "Hello from trioserve",
        "pid": os.getpid(),
        "listener": listener,
        "client": list(client) if client else None,
        "method": scope["method"],
        "path": scope["path"],
        "http_version": scope["http_version"],
    }
    wants_json = any(
        name == b"accept" and b"application/json" in value for name, value in scope["headers"]
    )
    if wants_json:
        body = json.dumps(info).encode() + b"\n"
        content_type = b"application/json"
    else:
        lines = [f"Hello from trioserve (pid {info['pid']})"]
        lines += [f"  listener {key}: {value}" for key, value in listener.items()]
        lines.append(f"  client: {info['client']}")
        lines.append(f"  request: {scope['method']} {scope['path']} HTTP/{scope['http_version']}")
        body = ("\n".join(lines) + "\n").encode()
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
