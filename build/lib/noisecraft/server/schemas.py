"""Request and response bodies. Types, ranges and unknown fields are checked here (422 with the field named);
what depends on the model or the server's limits is checked in jobs.py. Options left out take the task's
defaults, the same as the command line's (jobs.DEFAULTS)."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from noisecraft.tasks.batches import MAX_SEED

Finite = dict(allow_inf_nan=False)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Condition(Strict):
    prompt: Optional[str] = Field(None, max_length=2000, description="Text prompt; for a class-conditional model, "
                                  "one naming a class.")
    class_: Optional[Union[int, str]] = Field(None, alias="class", description="Class index or name "
                                              "(class-conditional models).")
    negative_prompt: Optional[str] = Field(None, max_length=2000, description="Guidance steers away from it.")


class Options(Strict):
    model: Optional[str] = Field(None, description="A model this server serves (GET /v1/models); default: the first.")
    sampler: Optional[str] = Field(None, description="Sampler name (GET /v1/models lists them).")
    steps: Optional[int] = Field(None, ge=1, description="Solver steps.")
    spacing: Optional[str] = Field(None, description="Timestep grid: leading | trailing | linspace | karras | logsnr "
                                   "| tuned.")
    eta: Optional[float] = Field(None, ge=0, description="Noise of DDIM/ancestral steps.", **Finite)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Image i uses seed SEED+i; "
                                "default: a random seed, returned with each image.")
    guidance: Optional[float] = Field(None, ge=0, le=100, description="Classifier-free guidance scale (1 = off; "
                                      "default: the model's).", **Finite)


class GenerateRequest(Options, Condition):
    n: int = Field(1, ge=1, description="Number of images.")


class UpscaleRequest(Options, Condition):
    image: str = Field(..., description="The low-resolution image, base64 PNG.")
    factor: Optional[int] = Field(None, ge=2, description="Upscaling factor (default: the model's own, else its "
                                  "size / the input's).")
    method: Optional[str] = Field(None, description="project | ilvr | none (a super-resolution model).")


class EditRequest(Options, Condition):
    image: str = Field(..., description="The image to edit, base64 PNG.")
    strength: Optional[float] = Field(None, ge=0, le=1, description="How far to noise the input: 0 keeps it, "
                                      "1 ignores it.", **Finite)


class InpaintRequest(Options, Condition):
    image: str = Field(..., description="The image, base64 PNG.")
    mask: Optional[str] = Field(None, description="Mask of the image's size, base64 PNG: white = fill, black = keep.")
    box: Optional[str] = Field(None, description="Region to fill instead of a mask: x0,y0,x1,y1 in pixels.")
    jump: Optional[int] = Field(None, ge=1, description="RePaint jump length.")
    resample: Optional[int] = Field(None, ge=1, description="RePaint resamplings of each jump.")
    reconstruction: Optional[float] = Field(None, ge=0, description="Reconstruction guidance weight (0: replacement "
                                            "only).", **Finite)


class Instance(Condition):
    image: Optional[str] = Field(None, description="Input image (upscale, edit, inpaint), base64 PNG.")
    mask: Optional[str] = Field(None, description="Inpainting mask, base64 PNG: white = fill.")
    box: Optional[str] = Field(None, description="Inpainting region x0,y0,x1,y1 instead of a mask.")


class Parameters(Options):
    task: Literal["generate", "upscale", "edit", "inpaint"] = "generate"
    strength: Optional[float] = Field(None, ge=0, le=1, **Finite)
    factor: Optional[int] = Field(None, ge=2)
    method: Optional[str] = None
    jump: Optional[int] = Field(None, ge=1)
    resample: Optional[int] = Field(None, ge=1)
    reconstruction: Optional[float] = Field(None, ge=0, **Finite)


class PredictRequest(Strict):
    """Vertex AI's prediction request: one image per instance; the parameters apply to all of them."""

    instances: list[Instance] = Field(..., min_length=1)
    parameters: Parameters = Field(default_factory=Parameters)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instances": [{"prompt": ""}], "parameters": {"task": "generate", "steps": 10, "seed": 0}}]})


class ImageResult(BaseModel):
    image: str = Field(..., description="Base64 PNG; its text chunks hold the metadata too.")
    seed: int
    metadata: dict[str, Any]


class ImagesResponse(BaseModel):
    images: list[ImageResult]


class PredictResponse(BaseModel):
    predictions: list[ImageResult]


class ErrorResponse(BaseModel):
    error: str
