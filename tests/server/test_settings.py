import pytest

from noisecraft.errors import NoisecraftError
from noisecraft.server import Settings
from noisecraft.server.settings import is_loopback, resolve_bind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.5"])
def test_loopback_needs_no_key(host):
    assert is_loopback(host)
    assert resolve_bind(host, 8080, None, {}).api_key is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_beyond_loopback_needs_a_key(host):
    with pytest.raises(NoisecraftError, match="--api-key"):
        resolve_bind(host, 8080, None, {})
    assert resolve_bind(host, 8080, "k", {}).api_key == "k"
    assert resolve_bind(host, 8080, None, {"NOISECRAFT_API_KEY": "env"}).api_key == "env"


def test_inside_vertex_the_platform_port_and_routes_win():
    bind = resolve_bind("127.0.0.1", 8080, None, {"AIP_HTTP_PORT": "8501", "AIP_PREDICT_ROUTE": "/p"})
    assert (bind.host, bind.port, bind.api_key, bind.health_route, bind.predict_route) == \
        ("0.0.0.0", 8501, None, "/health", "/p")


@pytest.mark.parametrize("env, match", [({"AIP_HTTP_PORT": "http"}, "AIP_HTTP_PORT"),
                                        ({"AIP_HTTP_PORT": "70000"}, "1..65535")])
def test_bad_vertex_ports(env, match):
    with pytest.raises(NoisecraftError, match=match):
        resolve_bind("127.0.0.1", 8080, None, env)


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"queue_size": -1}, {"timeout_s": 0}, {"health_route": "health"}])
def test_bad_settings(kwargs):
    with pytest.raises(NoisecraftError):
        Settings(**kwargs)
