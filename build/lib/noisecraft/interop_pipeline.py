"""A diffusers pipeline for class-conditional UNet2DModel models with classifier-free guidance.

`noisecraft export` copies this file, unchanged, as `pipeline.py` into the folder of a class-conditional model,
beside unet/ and scheduler/; it imports only torch and diffusers. The UNet's last class embedding is the
"no class" token the model was trained with (condition dropout), which guidance's second branch uses:

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(DIR, custom_pipeline=DIR, trust_remote_code=True)
    images = pipe(class_labels=[7, 7, 3], guidance_scale=2.0, num_inference_steps=50).images

The class is named like the pipeline of other exports (noisecraft/interop_generic.py): diffusers caches a local
custom pipeline as one module, so two exports loaded in one process must not define two pipeline classes.
Any diffusers scheduler can be swapped in (`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`).
Guidance as in Ho & Salimans (2021): out = out_uncond + w (out_cond - out_uncond), both passes in one batch.
"""
from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class NoisecraftPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels, guidance_scale: float = 1.0, num_inference_steps: int = 50, generator=None,
                 latents: torch.Tensor | None = None, eta: float = 0.0, use_clipped_model_output: bool | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """class_labels: one class index per image (the null index, num_class_embeds - 1, draws unconditionally);
        generator: one torch.Generator, or one per image; latents: the initial noise (B, C, H, W) instead."""
        config = self.unet.config
        null = config.num_class_embeds - 1
        labels = torch.as_tensor(class_labels, device=self.device).long().reshape(-1)
        if len(labels) == 0 or labels.min() < 0 or labels.max() > null:
            raise ValueError(f"class_labels must be indices from 0 to {null} ({null} draws without a class)")
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        shape = (len(labels), config.in_channels, size, size)
        image = latents.to(self.device, self.unet.dtype) if latents is not None else \
            randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        both = torch.cat([labels, torch.full_like(labels, null)])

        def predict(x: torch.Tensor, t) -> torch.Tensor:
            if guidance_scale == 1.0:
                return self.unet(x, t, class_labels=labels).sample
            out_cond, out_uncond = self.unet(torch.cat([x, x]), t, class_labels=both).sample.chunk(2)
            return out_uncond + guidance_scale * (out_cond - out_uncond)

        return run_scheduler(self, image, predict, num_inference_steps, generator=generator, eta=eta,
                             use_clipped_model_output=use_clipped_model_output, output_type=output_type,
                             return_dict=return_dict)


def run_scheduler(pipe: DiffusionPipeline, image: torch.Tensor, predict, num_inference_steps: int, *, generator, eta,
                  use_clipped_model_output, output_type: str, return_dict: bool):
    """The reverse process with `pipe.scheduler` from the initial noise `image`, `predict(x, t)` giving the model
    output; the step options the scheduler accepts are passed on. Images in [0, 1] as `output_type` asks."""
    image = image * pipe.scheduler.init_noise_sigma
    pipe.scheduler.set_timesteps(num_inference_steps)
    accepted = inspect.signature(pipe.scheduler.step).parameters
    extra = {k: v for k, v in (("eta", eta), ("use_clipped_model_output", use_clipped_model_output),
                               ("generator", generator)) if k in accepted and v is not None}
    for t in pipe.progress_bar(pipe.scheduler.timesteps):
        out = predict(pipe.scheduler.scale_model_input(image, t), t)
        image = pipe.scheduler.step(out, t, image, **extra).prev_sample
    image = (image / 2 + 0.5).clamp(0, 1)
    if output_type == "pil":
        image = pipe.numpy_to_pil(image.cpu().permute(0, 2, 3, 1).float().numpy())
    elif output_type == "np":
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
    return ImagePipelineOutput(images=image) if return_dict else (image,)
