"""noisecraft: diffusion image generation, CPU first."""
from noisecraft.diffusion import NoiseSchedule
from noisecraft.errors import NoisecraftError
from noisecraft.models import load_model
from noisecraft.samplers import SAMPLERS, sample
from noisecraft.tasks import edit, inpaint, upscale
from noisecraft.version import __version__

__all__ = ["NoiseSchedule", "NoisecraftError", "SAMPLERS", "edit", "inpaint", "load_model", "sample", "upscale",
           "__version__"]
