"""Serving: a FastAPI app with a REST API (plain /v1 routes and Vertex AI's custom-container contract) and a
web UI, in front of a bounded queue of workers. `create_app()` builds it, `serve()` runs it on uvicorn."""
from noisecraft.server.app import create_app, serve
from noisecraft.server.settings import Limits, Settings, resolve_bind

__all__ = ["Limits", "Settings", "create_app", "resolve_bind", "serve"]
