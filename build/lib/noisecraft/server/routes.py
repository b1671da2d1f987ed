"""The REST API: plain routes under /v1 for programs, and Vertex AI's custom-container contract (a health
route that is 200 only once the models are loaded; a predict route taking {"instances", "parameters"} and
answering {"predictions"}, one per instance)."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from noisecraft.samplers import SAMPLERS, SPACINGS
from noisecraft.server.jobs import DEFAULTS, Item, prepare
from noisecraft.server.models import ModelStore
from noisecraft.server.pool import WorkPool
from noisecraft.server.schemas import (Condition, EditRequest, ErrorResponse, GenerateRequest, ImagesResponse,
                                       InpaintRequest, PredictRequest, PredictResponse, UpscaleRequest)
from noisecraft.server.settings import Settings

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 503, 504)}
CONDITION_FIELDS = set(Condition.model_fields)
INPUT_FIELDS = {"image", "mask", "box"}


@dataclass
class ServerState:
    settings: Settings
    store: ModelStore
    pool: WorkPool

    async def run(self, task: str, options: dict, items: list[Item]) -> list[dict]:
        """Check the request (off the event loop: it decodes images), then queue it and wait for its images."""
        prepared = await run_in_threadpool(prepare, self.store, self.settings.limits, task, options, items)
        return await self.pool.result(self.pool.submit(prepared))


def _split(request, exclude: set = frozenset()) -> tuple[dict, Item]:
    """A plain route's body -> (the task's options, the one item it describes)."""
    data = request.model_dump(exclude=exclude)
    item = Item(**{k: data.pop(k) for k in list(data) if k in CONDITION_FIELDS | INPUT_FIELDS})
    return data, item


def api_router(state: ServerState, auth) -> APIRouter:
    router = APIRouter(responses=ERRORS)
    guarded = [Depends(auth)]

    @router.get(state.settings.health_route, tags=["vertex"], summary="Health: 200 once the models are loaded")
    async def health():
        store = state.store
        if store.ready:
            return {"status": "ok", "models": [s.name for s in store.served()]}
        body = {"status": "error", "error": store.error} if store.error else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @router.post(state.settings.predict_route, tags=["vertex"], response_model=PredictResponse, dependencies=guarded,
                 summary="Vertex AI prediction: one image per instance")
    async def predict(body: PredictRequest):
        params = body.parameters.model_dump()
        task = params.pop("task")
        items = [Item(**instance.model_dump()) for instance in body.instances]
        return {"predictions": await state.run(task, params, items)}

    @router.get("/v1/models", tags=["api"], dependencies=guarded, summary="The models, samplers, tasks and limits")
    async def models():
        store = state.store
        served = store.served() if store.ready else []
        return {"default": store.default, "ready": store.ready,
                "models": [s.describe() | {"default": s.name == store.default} for s in served],
                "samplers": ["auto", *SAMPLERS], "spacings": [*SPACINGS, "tuned"], "tasks": DEFAULTS,
                "limits": vars(state.settings.limits)}

    @router.post("/v1/generate", tags=["api"], response_model=ImagesResponse, dependencies=guarded,
                 summary="Generate images from noise (optionally for a class or prompt)")
    async def generate(body: GenerateRequest):
        options, item = _split(body, {"n"})
        return {"images": await state.run("generate", options, [item] * body.n)}

    @router.post("/v1/upscale", tags=["api"], response_model=ImagesResponse, dependencies=guarded,
                 summary="Super-resolution of one low-resolution image to the model's size")
    async def upscale(body: UpscaleRequest):
        options, item = _split(body)
        return {"images": await state.run("upscale", options, [item])}

    @router.post("/v1/edit", tags=["api"], response_model=ImagesResponse, dependencies=guarded,
                 summary="SDEdit: noise an image to `strength`, then denoise it")
    async def edit(body: EditRequest):
        options, item = _split(body)
        return {"images": await state.run("edit", options, [item])}

    @router.post("/v1/inpaint", tags=["api"], response_model=ImagesResponse, dependencies=guarded,
                 summary="RePaint: fill the white region of a mask (or a box), keep every other pixel")
    async def inpaint(body: InpaintRequest):
        options, item = _split(body)
        return {"images": await state.run("inpaint", options, [item])}

    return router
