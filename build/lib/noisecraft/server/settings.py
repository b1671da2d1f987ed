"""What a server may be asked to do (limits), how it runs (workers, queue, timeout), and where it listens:
loopback by default, another address only with an API key, and 0.0.0.0:$AIP_HTTP_PORT inside a Vertex AI
container (DESIGN.md §7)."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Mapping

from noisecraft.errors import NoisecraftError

API_KEY_ENV = "NOISECRAFT_API_KEY"


@dataclass(frozen=True)
class Limits:
    """Per-request caps that keep one request from holding the server: every value above them is a 4xx."""

    max_steps: int = 250               # solver steps (RePaint: reverse steps before its jumps)
    max_model_calls: int = 2500        # model calls per image, whatever the sampler (RePaint's defaults need ~2,300)
    max_batch: int = 8                 # images per request (instances, or n)
    max_image_side: int = 1024         # pixels on either side of an input image, checked before decoding it
    max_body_bytes: int = 8 * 2 ** 20  # a request body; Vertex AI itself stops at 1.5 MB


@dataclass(frozen=True)
class Settings:
    limits: Limits = Limits()
    workers: int = 1                   # jobs run at once; torch already spreads one job over the cores
    queue_size: int = 32               # jobs waiting beyond those running; one more is answered 503
    timeout_s: float = 120.0           # from arrival to answer; a job past it is stopped at its next step
    api_key: str | None = None         # bearer token required on /v1/* and predict (and the UI's login)
    device: str = "cpu"
    health_route: str = "/health"
    predict_route: str = "/predict"

    def __post_init__(self):
        if self.workers < 1 or self.queue_size < 0 or not self.timeout_s > 0:
            raise NoisecraftError("workers must be >= 1, the queue size >= 0 and the timeout > 0 seconds")
        for route in (self.health_route, self.predict_route):
            if not route.startswith("/"):
                raise NoisecraftError(f"route {route!r} must start with '/'")


@dataclass(frozen=True)
class Bind:
    host: str
    port: int
    api_key: str | None
    health_route: str
    predict_route: str
    vertex: bool


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_bind(host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
                 env: Mapping[str, str] | None = None) -> Bind:
    """Where to listen and what to require. Inside Vertex AI (AIP_HTTP_PORT set) the platform's port, routes and
    0.0.0.0 win, and the endpoint's IAM guards it; elsewhere an address beyond loopback needs an API key."""
    env = os.environ if env is None else env
    api_key = api_key or env.get(API_KEY_ENV) or None
    health, predict = env.get("AIP_HEALTH_ROUTE") or "/health", env.get("AIP_PREDICT_ROUTE") or "/predict"
    if env.get("AIP_HTTP_PORT"):
        try:
            port = int(env["AIP_HTTP_PORT"])
        except ValueError:
            raise NoisecraftError(f"AIP_HTTP_PORT must be a port number, got {env['AIP_HTTP_PORT']!r}") from None
        return Bind("0.0.0.0", _check_port(port), api_key, health, predict, vertex=True)
    if not is_loopback(host) and not api_key:
        raise NoisecraftError(f"binding {host} lets other machines reach the server: give --api-key KEY (or set "
                              f"{API_KEY_ENV}) so clients must send 'Authorization: Bearer KEY', or bind 127.0.0.1")
    return Bind(host, _check_port(port), api_key, health, predict, vertex=False)


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise NoisecraftError(f"the port must lie in 1..65535, got {port}")
    return port
