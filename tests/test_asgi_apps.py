"""Real frameworks on trio through the engine: Starlette, FastAPI, and a raw anyio app."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import trio
from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.asgiserver import running
from trioserve._asgi_types import ASGIReceive, ASGISend, Scope


class Gates:
    """Events the apps wait on, so the tests can hold a response at a chosen point."""

    def __init__(self) -> None:
        self.streamed_first = trio.Event()
        self.background_may_run = trio.Event()
        self.background_done = trio.Event()


def starlette_app(gates: Gates) -> Starlette:
    async def home(request: Request) -> Response:
        return PlainTextResponse(f"hello {request.url.path} {request.query_params['q']}")

    async def echo(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"length": len(body), "type": request.headers["content-type"]})

    async def state(request: Request) -> Response:
        return JSONResponse({"from": request.state.__getattr__("from")})

    async def stream(request: Request) -> Response:
        async def pieces() -> AsyncIterator[bytes]:
            yield b"first,"
            await gates.streamed_first.wait()
            yield b"second"

        return StreamingResponse(pieces(), media_type="text/plain")

    async def sync_stream(request: Request) -> Response:
        def pieces() -> Iterator[bytes]:  # run in a worker thread by Starlette
            assert threading.current_thread() is not threading.main_thread()
            yield from (b"a", b"b", b"c")

        return StreamingResponse(pieces())

    async def background(request: Request) -> Response:
        async def later() -> None:
            await gates.background_may_run.wait()
            gates.background_done.set()

        return PlainTextResponse("sent first", background=BackgroundTask(later))

    class AddHeader(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            response.headers["x-middleware"] = "yes"
            return response

    return Starlette(
        routes=[
            Route("/", home),
            Route("/echo", echo, methods=["POST"]),
            Route("/state", state),
            Route("/stream", stream),
            Route("/sync-stream", sync_stream),
            Route("/background", background),
        ],
        middleware=[Middleware(AddHeader)],
    )


async def test_starlette() -> None:
    gates = Gates()
    with trio.fail_after(10):
        async with (
            running(starlette_app(gates)) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            got = await client.get("/", params={"q": "x y"})
            assert (got.status_code, got.text) == (200, "hello / x y")
            assert got.headers["x-middleware"] == "yes"
            got = await client.post(
                "/echo", content=b"x" * 3000, headers={"content-type": "text/plain"}
            )
            assert got.json() == {"length": 3000, "type": "text/plain"}
            assert (await client.get("/state")).json() == {"from": "lifespan"}
            assert (await client.get("/missing")).status_code == 404
            assert (await client.post("/")).status_code == 405
            got = await client.get("/sync-stream")
            assert got.text == "abc" and got.headers["transfer-encoding"] == "chunked"
            assert (await client.head("/")).text == ""

            # The first piece reaches the client before the second is produced.
            async with client.stream("GET", "/stream") as streamed:
                chunks = streamed.aiter_raw()
                assert await chunks.__anext__() == b"first,"
                gates.streamed_first.set()
                assert [c async for c in chunks] == [b"second"]

            # The response is complete before its background task runs.
            got = await client.get("/background")
            assert got.text == "sent first"
            assert not gates.background_done.is_set()
            gates.background_may_run.set()
            await gates.background_done.wait()


class Item(BaseModel):
    name: str
    price: float


def fastapi_app(gates: Gates) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.post("/items")
    async def create_item(item: Item) -> dict[str, Any]:
        return {"name": item.name, "double": item.price * 2}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, bool]:  # FastAPI runs it in a worker thread
        return {"worker_thread": threading.current_thread() is not threading.main_thread()}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def numbers() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"%d\n" % i
                await anyio.lowlevel.checkpoint()

        return StreamingResponse(numbers(), media_type="text/plain")

    @app.post("/notify")
    async def notify(background: BackgroundTasks) -> dict[str, str]:
        async def later() -> None:
            await gates.background_may_run.wait()
            gates.background_done.set()

        background.add_task(later)
        return {"status": "queued"}

    return app


async def test_fastapi() -> None:
    gates = Gates()
    with trio.fail_after(10):
        async with (
            running(fastapi_app(gates)) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            got = await client.get("/items/42", params={"q": "yes"})
            assert got.json() == {"item_id": 42, "q": "yes"}
            got = await client.post("/items", json={"name": "pen", "price": 1.5})
            assert got.json() == {"name": "pen", "double": 3.0}
            got = await client.post("/items", json={"name": "pen"})
            assert got.status_code == 422
            assert (await client.get("/items/notanint")).status_code == 422
            assert (await client.get("/sync")).json() == {"worker_thread": True}
            assert (await client.get("/stream")).text == "0\n1\n2\n3\n4\n"
            assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")
            got = await client.post("/notify")
            assert got.json() == {"status": "queued"}
            assert not gates.background_done.is_set()
            gates.background_may_run.set()
            await gates.background_done.wait()


async def anyio_app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Reads the body in one task, hashes it in a worker thread, sends from another task."""
    if scope["type"] != "http":
        return
    received: list[bytes] = []
    ready = anyio.Event()

    async def read() -> None:
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body", False):
                ready.set()
                return

    async def answer() -> None:
        await ready.wait()
        body = b"".join(received)
        digest = await anyio.to_thread.run_sync(lambda: sum(body) % 251)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d:%d" % (len(body), digest)})

    async with anyio.create_task_group() as group:
        group.start_soon(answer)
        group.start_soon(read)


async def test_anyio_task_groups_and_threads() -> None:
    body = bytes(range(256)) * 1000
    with trio.fail_after(10):
        async with running(anyio_app) as server, httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(3):
                got = await client.post("/", content=body)
                assert got.text == f"{len(body)}:{sum(body) % 251}"
