"""Any noisecraft model as a diffusers pipeline, for the architectures with no UNet2DModel counterpart
(text-conditional, super-resolution, widths diffusers would group differently).

`noisecraft export` copies this file, unchanged, twice: as `unet/modeling_noisecraft.py`, where diffusers finds
the `NoisecraftUNet` component named in model_index.json, and as `pipeline.py`, the pipeline. Both run
noisecraft's own network, so the environment that loads the folder needs `pip install noisecraft`:

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(DIR, custom_pipeline=DIR, trust_remote_code=True)
    images = pipe(prompt="a red circle left of a blue square", batch_size=4, guidance_scale=4.0).images
    images = pipe(low_res=y).images                      # a super-resolution model: y (B, C, h, w) in [-1, 1]
    images = pipe(class_labels=[7, 7]).images            # a class model

Guidance as in Ho & Salimans (2021), both branches in one batch (noisecraft.guidance.guided).
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from noisecraft.guidance import condition, guided
from noisecraft.interop_pipeline import run_scheduler       # a function only: one pipeline class per module
from noisecraft.models import DiffusionModel, ModelConfig


class NoisecraftUNet(ModelMixin, ConfigMixin):
    """noisecraft's DiffusionModel (config.json + weights) behind diffusers' model loading."""

    @register_to_config
    def __init__(self, noisecraft_config: dict | None = None):
        super().__init__()
        self.model = DiffusionModel(ModelConfig.from_dict(noisecraft_config))

    def forward(self, sample: torch.Tensor, timestep, **cond) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1).expand(sample.shape[0])
        return self.model(sample, t, **cond)


class NoisecraftPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, prompt: str | None = None, negative_prompt: str | None = None,
                 class_labels=None, low_res: torch.Tensor | None = None, guidance_scale: float | None = None,
                 num_inference_steps: int = 50, generator=None, latents: torch.Tensor | None = None, eta: float = 0.0,
                 use_clipped_model_output: bool | None = None, output_type: str = "pil", return_dict: bool = True):
        """prompt / negative_prompt: a text model's (one for the whole batch); class_labels: one class index per
        image; low_res: a super-resolution model's inputs; guidance_scale: default the model's own."""
        model = self.unet.model
        n = len(low_res) if low_res is not None else len(class_labels) if class_labels is not None else batch_size
        if low_res is not None:
            cond, negative = {"low_res": low_res.to(self.device, torch.float32)}, None
        elif class_labels is not None:
            cond = {"class_labels": torch.as_tensor(class_labels, device=self.device).long().reshape(-1)}
            negative = None
        else:
            c = condition(model, n, prompt=prompt, negative_prompt=negative_prompt)
            cond, negative = c.cond, c.negative if c.label is not None else None
        scale = model.config.guidance if guidance_scale is None else guidance_scale
        net = guided(model, cond, scale, negative) if scale != 1.0 and cond else lambda x, t: model(x, t, **cond)

        shape = (n, *model.config.image_shape)
        image = latents.to(self.device) if latents is not None else \
            randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        return run_scheduler(self, image, lambda x, t: net(x, torch.full((n,), float(t), device=self.device)),
                             num_inference_steps, generator=generator, eta=eta,
                             use_clipped_model_output=use_clipped_model_output, output_type=output_type,
                             return_dict=return_dict)
