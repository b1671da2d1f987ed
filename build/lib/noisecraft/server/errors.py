"""Every failure as a JSON body {"error": "..."} with the status that says whose it is: 4xx for the request
(400 malformed JSON, 401 no or wrong key, 404 unknown route or model, 413 too large, 422 a value that cannot
be used), 503 for a full queue or models still loading (retry), 504 for a request past the timeout. A 500 is
only ever a bug in the server, logged with its traceback."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from noisecraft.errors import NoisecraftError
from noisecraft.server.models import ModelsLoading, UnknownModel
from noisecraft.server.pool import JobTimeout, ServerBusy

log = logging.getLogger("noisecraft.server")


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _where(loc) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "the request body is not valid JSON: send a JSON object "
                                   "(Content-Type: application/json)")
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return error_response(422, "the request has no body: send a JSON object ({} takes every default)")
    message = "; ".join(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5])
    detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return error_response(422, message, detail=detail)


async def _noisecraft(request: Request, exc: NoisecraftError) -> JSONResponse:
    if isinstance(exc, UnknownModel):
        return error_response(404, str(exc))
    if isinstance(exc, ModelsLoading):
        return error_response(503, str(exc), {"Retry-After": "5"})
    return error_response(422, str(exc))


async def _busy(request: Request, exc: ServerBusy) -> JSONResponse:
    return error_response(503, str(exc), {"Retry-After": "1"})


async def _timeout(request: Request, exc: JobTimeout) -> JSONResponse:
    return error_response(504, str(exc))


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}: GET /v1/models, POST /v1/generate|upscale|edit|inpaint, or see /docs"
    return error_response(exc.status_code, message, exc.headers)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal server error ({type(exc).__name__}): this is a bug in noisecraft's server, "
                               "please report it with the request")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(NoisecraftError, _noisecraft)
    app.add_exception_handler(ServerBusy, _busy)
    app.add_exception_handler(JobTimeout, _timeout)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _bug)
