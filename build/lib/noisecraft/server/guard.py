"""What stands before the routes: a cap on the request body (read before any JSON parsing, chunked bodies
included) and the bearer-token check."""
from __future__ import annotations

import secrets

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from noisecraft.server.errors import error_response


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI, reading the body, passes it on as it is (413) instead of a parse error."""

    def __init__(self, message: str):
        super().__init__(413, message)


class BodyLimit:
    """Answer 413 to a body over `max_bytes`: at once from Content-Length, or as soon as a chunked body passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"the request body is over this server's limit of {self.max_bytes} bytes: send smaller images "
                   "(Vertex AI caps a request at 1.5 MB anyway)")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(413, message)(scope, receive, send)
        seen, started = 0, False

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(message)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await error_response(413, message)(scope, receive, send)


def bearer_check(api_key: str | None):
    """A FastAPI dependency: with a key set, 'Authorization: Bearer KEY' is required (compared in constant time)."""
    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise Unauthorized
    return check


class Unauthorized(Exception):
    """No bearer token, or the wrong one."""


async def unauthorized(request: Request, exc: Unauthorized):
    return error_response(401, "this server needs an API key: send 'Authorization: Bearer KEY'",
                          {"WWW-Authenticate": "Bearer"})

