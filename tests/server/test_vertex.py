"""Vertex AI's custom-container contract, the API key, the bounded queue and the per-request timeout."""
import threading

import pytest
from fastapi.testclient import TestClient

from noisecraft.server import Limits, Settings, create_app
from noisecraft.server.settings import resolve_bind
from tests.server.conftest import decode, png_b64, wait_ready
from tests.server.test_routes import error


def test_predict_answers_one_prediction_per_instance(client):
    body = {"instances": [{}, {}, {}], "parameters": {"steps": 4, "seed": 5, "sampler": "ddim"}}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["seed"] for p in predictions] == [5, 6, 7]
    assert decode(predictions[0]["image"]).size == (16, 16)


def test_predict_groups_instances_by_class_and_keeps_their_order(client):
    instances = [{"class": 1}, {"class": 2}, {"class": 1}, {"prompt": "a 2"}]
    r = client.post("/predict", json={"instances": instances,
                                      "parameters": {"model": "tiny-class", "steps": 3, "seed": 0}})
    predictions = r.json()["predictions"]
    assert [p["metadata"]["class"] for p in predictions] == ["1", "2", "1", "2"]
    assert [p["seed"] for p in predictions] == [0, 1, 2, 3]
    # Image 2 is image 0's class with its own seed: the same as asking for it alone.
    alone = client.post("/predict", json={"instances": [{"class": 1}],
                                          "parameters": {"model": "tiny-class", "steps": 3, "seed": 2}}).json()
    assert alone["predictions"][0]["image"] == predictions[2]["image"]


def test_predict_runs_every_task(client, digit):
    image = png_b64(digit)
    for params, instance in [({"task": "edit", "strength": 0.4}, {"image": image}),
                             ({"task": "upscale", "factor": 2}, {"image": png_b64(digit[::2, ::2])}),
                             ({"task": "inpaint", "jump": 2, "resample": 1}, {"image": image, "box": "0,0,8,8"})]:
        r = client.post("/predict", json={"instances": [instance], "parameters": params | {"steps": 4, "seed": 0}})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["metadata"]["task"] == params["task"]


BAD_PREDICT = {
    "no instances": ({"instances": []}, "instances"),
    "instances missing": ({"parameters": {}}, "instances: Field required"),
    "unknown task": ({"instances": [{}], "parameters": {"task": "paint"}}, "task"),
    "option of another task": ({"instances": [{}], "parameters": {"strength": 0.5}},
                               "strength does not apply to task 'generate'"),
    "image for generate": ({"instances": [{"image": "aGk="}]}, "drop image"),
    "edit without an image": ({"instances": [{}], "parameters": {"task": "edit"}}, "works on an image"),
    "unknown instance field": ({"instances": [{"promt": "a 3"}]}, "promt"),
    "too many instances": ({"instances": [{}] * 5}, "1 to 4"),
    "unknown sampler": ({"instances": [{}], "parameters": {"sampler": "x"}}, "unknown sampler"),
}


@pytest.mark.parametrize("body, match", BAD_PREDICT.values(), ids=BAD_PREDICT.keys())
def test_bad_predict_requests_are_422(client, body, match):
    error(client.post("/predict", json=body), 422, match)


def test_health_is_503_until_the_models_are_loaded_then_200():
    app = create_app("digits", ui=False)
    store, gate = app.state.noisecraft.store, threading.Event()
    load = store.load
    store.load = lambda: (gate.wait(30), load())
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        error(c.post("/v1/generate", json={"steps": 2}), 503, "still loading")
        gate.set()
        wait_ready(c)
        assert c.get("/health").json() == {"status": "ok", "models": ["digits"]}


def test_vertex_routes_from_the_environment():
    env = {"AIP_HTTP_PORT": "9000", "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
           "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict"}
    bind = resolve_bind("127.0.0.1", 8080, None, env)
    assert (bind.host, bind.port, bind.vertex) == ("0.0.0.0", 9000, True)
    app = create_app("digits", Settings(health_route=bind.health_route, predict_route=bind.predict_route), ui=False)
    with TestClient(app) as c:
        wait_ready(c, bind.health_route)
        r = c.post(bind.predict_route, json={"instances": [{}], "parameters": {"steps": 2, "seed": 0}})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        assert c.get("/health").status_code == 404


def test_an_api_key_guards_everything_but_health_and_docs():
    app = create_app("digits", Settings(api_key="s3cret"), ui=False)
    with TestClient(app) as c:
        wait_ready(c)
        for method, route in [("get", "/v1/models"), ("post", "/v1/generate"), ("post", "/predict")]:
            r = c.get(route) if method == "get" else c.post(route, json={})
            error(r, 401, "Bearer")
            assert r.headers["www-authenticate"] == "Bearer"
        error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.post("/v1/generate", json={"steps": 2}, headers=ok).status_code == 200
        assert c.get("/docs").status_code == 200


def _blocked(app, gate: threading.Event):
    """Occupy the app's only worker until `gate` is set."""
    pool = app.state.noisecraft.pool
    return pool.submit(lambda job: gate.wait(30))


def test_a_full_queue_is_503_with_retry_after():
    app = create_app("digits", Settings(workers=1, queue_size=1), ui=False)
    with TestClient(app) as c:
        wait_ready(c)
        gate = threading.Event()
        running, waiting = _blocked(app, gate), _blocked(app, gate)       # one runs, one fills the queue
        r = c.post("/v1/generate", json={"steps": 2})
        error(r, 503, "busy")
        assert r.headers["retry-after"] == "1"
        gate.set()
        running.future.result(5), waiting.future.result(5)
        assert c.post("/v1/generate", json={"steps": 2}).status_code == 200


def test_a_request_past_the_timeout_is_504_and_its_job_never_runs():
    app = create_app("digits", Settings(workers=1, queue_size=4, timeout_s=0.5), ui=False)
    with TestClient(app) as c:
        wait_ready(c)
        gate = threading.Event()
        blocker = _blocked(app, gate)
        error(c.post("/v1/generate", json={"steps": 2}), 504, "0.5 s limit")
        gate.set()
        blocker.future.result(5)
        pool = app.state.noisecraft.pool
        assert pool.pending == 0
        pool.timeout_s = 30.0                 # the pool still serves; a loaded CI machine may need over 0.5 s for it
        assert c.post("/v1/generate", json={"steps": 2}).status_code == 200


def test_the_timeout_stops_a_running_job_at_its_next_step():
    limits = Limits(max_steps=1000, max_model_calls=10_000)
    app = create_app("digits", Settings(limits=limits, timeout_s=0.3), ui=False)
    with TestClient(app) as c:
        wait_ready(c)
        error(c.post("/v1/generate", json={"steps": 1000, "sampler": "ddim", "n": 8}), 504, "limit")
        pool = app.state.noisecraft.pool
        for _ in range(100):                          # the worker gives up within a step or two
            if pool.pending == 0:
                break
            threading.Event().wait(0.05)
        assert pool.pending == 0
