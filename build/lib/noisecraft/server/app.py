"""The app factory and the entry point that runs it on uvicorn."""
from __future__ import annotations

import logging
import socket
import tempfile
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline
from torch import nn

from noisecraft.errors import NoisecraftError
from noisecraft.server import errors
from noisecraft.server.guard import BodyLimit, Unauthorized, bearer_check, unauthorized
from noisecraft.server.models import ModelStore
from noisecraft.server.pool import WorkPool
from noisecraft.server.routes import ServerState, api_router
from noisecraft.server.settings import Settings, resolve_bind
from noisecraft.version import __version__

DESCRIPTION = """Diffusion image generation over HTTP. Images travel as base64 PNG whose text chunks carry the
metadata (model, sampler, steps, seed, guidance, ...) that makes them again. With an API key set, send
`Authorization: Bearer KEY`. The predict and health routes follow Vertex AI's custom-container contract."""


def create_app(models: str | Path | Sequence[str | Path] | Mapping[str, nn.Module | str | Path],
               settings: Settings | None = None, *, ui: bool = True) -> FastAPI:
    """The server for `models` (shipped names, model or diffusers folders, or {name: loaded model}; the first is
    the default). The models load in the background once the app starts; the health route is 503 until then."""
    settings = settings or Settings()
    store = ModelStore(models, settings.device)
    state = ServerState(settings, store, WorkPool(settings.workers, settings.queue_size, settings.timeout_s))
    folder = tempfile.TemporaryDirectory(prefix="noisecraft-ui-")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.load_in_background()
        yield
        state.pool.shutdown()
        folder.cleanup()

    app = FastAPIOffline(title="noisecraft", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.noisecraft = state
    errors.install(app)
    app.add_exception_handler(Unauthorized, unauthorized)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.include_router(api_router(state, bearer_check(settings.api_key)))

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui/" if ui else "/docs")

    if ui:
        from noisecraft.server.ui import mount_ui
        from noisecraft.server.ui.common import UIContext
        mount_ui(app, UIContext(state, Path(folder.name)), settings.api_key)
    return app


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise NoisecraftError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port, or stop what "
                                  "uses it") from None


def serve(models, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          settings: Settings | None = None, ui: bool = True, log_level: str = "info") -> None:
    """Run the server until interrupted. Where it listens and what it requires: settings.resolve_bind."""
    import uvicorn

    bind = resolve_bind(host, port, api_key)
    settings = replace(settings or Settings(), api_key=bind.api_key, health_route=bind.health_route,
                       predict_route=bind.predict_route)
    check_port_free(bind.host, bind.port)
    app = create_app(models, settings, ui=ui)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")
    where = f"http://{bind.host}:{bind.port}" + (" as a Vertex AI container" if bind.vertex else "")
    names = ", ".join(app.state.noisecraft.store.specs)
    logging.getLogger("noisecraft.server").info("serving %s at %s: %sAPI docs at /docs", names, where,
                                                "web UI at /ui/, " if ui else "")
    uvicorn.run(app, host=bind.host, port=bind.port, log_level=log_level)
