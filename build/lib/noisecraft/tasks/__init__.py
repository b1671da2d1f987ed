"""Image-to-image tasks with any trained model: SDEdit editing, RePaint inpainting, zero-shot super-resolution."""
from noisecraft.tasks.edit import edit
from noisecraft.tasks.inpaint import inpaint
from noisecraft.tasks.superres import upscale

__all__ = ["edit", "inpaint", "upscale"]
