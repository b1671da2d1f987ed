"""Pictures of the process: image grids, forward-process strips, reverse-process GIF frames and
schedule plots. Functions return PIL images (or a matplotlib figure); callers decide where to save."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from noisecraft.diffusion import NoiseSchedule, q_sample


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (B, C, H, W) in [-1, 1] -> uint8 array, channels last."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def to_pil(x: torch.Tensor, scale: int = 1) -> Image.Image:
    """One image (C, H, W) in [-1, 1] -> PIL "L" or "RGB", enlarged `scale` times (nearest)."""
    arr = to_uint8(x)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, "L" if arr.shape[-1] == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def from_pil(img: Image.Image, channels: int) -> torch.Tensor:
    """PIL image -> (C, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def auto_scale(size: int, target: int = 64) -> int:
    """Enlarge small images (8x8 digits) so they are visible in a grid."""
    return max(1, target // size)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int | None = None,
              background: int = 255) -> Image.Image:
    """(B, C, H, W) in [-1, 1] -> one image, `nrow` images per row, white gutters."""
    b, c, h, w = images.shape
    scale = scale or auto_scale(max(h, w))
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    tiles = to_uint8(images)                                              # (B, H, W, C)
    H, W = h * scale, w * scale
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, c), background, np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        tile = tiles[i].repeat(scale, 0).repeat(scale, 1)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + col * (W + pad): pad + col * (W + pad) + W] = tile
    return Image.fromarray(grid[..., 0] if c == 1 else grid, "L" if c == 1 else "RGB")


def labelled_row(images: list[Image.Image], labels: list[str], pad: int = 4) -> Image.Image:
    """Tiles side by side with a caption under each."""
    w, h = images[0].size
    text_h = 14
    out = Image.new("RGB", (len(images) * (w + pad) + pad, h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(out)
    for i, (img, label) in enumerate(zip(images, labels)):
        x = pad + i * (w + pad)
        out.paste(img.convert("RGB"), (x, pad))
        draw.text((x + 2, h + pad + 1), label, fill="black")
    return out


def forward_strip(x0: torch.Tensor, schedule: NoiseSchedule, timesteps: list[int], generator: torch.Generator | None = None,
                  scale: int | None = None) -> Image.Image:
    """x_0 ... x_T at the chosen t for a batch of images (one row each), drawn in closed form
    with one shared eps per row so the picture shows the signal fading, not new noise."""
    b = x0.shape[0]
    scale = scale or auto_scale(x0.shape[-1])
    noise = torch.randn(x0.shape, generator=generator)
    rows = []
    for i in range(b):
        tiles, labels = [], []
        for t in timesteps:
            xt = x0[i:i + 1] if t < 0 else q_sample(schedule, x0[i:i + 1], torch.tensor([float(t)]), noise[i:i + 1])
            tiles.append(to_pil(xt[0], scale))
            labels.append("x0" if t < 0 else f"t={t}")
        rows.append(labelled_row(tiles, labels))
    out = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, r in enumerate(rows):
        out.paste(r, (0, i * r.height))
    return out


def reverse_frame(x_t: torch.Tensor, x0_pred: torch.Tensor, label: str, nrow: int | None = None) -> Image.Image:
    """One GIF frame: the grid of x_t beside the grid of the model's current x_0 estimate."""
    left, right = make_grid(x_t, nrow), make_grid(x0_pred, nrow)
    return labelled_row([left, right], [f"x_t  {label}", "predicted x_0"])


def schedule_figure(schedules: dict[str, NoiseSchedule]):
    """alpha_bar and SNR (log scale) against t, one line per schedule."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, s in schedules.items():
        t = np.arange(s.num_timesteps)
        ax1.plot(t, s.alphas_cumprod.numpy(), label=name)
        ax2.semilogy(t, (s.alphas_cumprod / (1 - s.alphas_cumprod)).numpy(), label=name)
    ax1.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title="signal kept")
    ax2.set(xlabel="t", ylabel=r"SNR = $\bar\alpha_t / (1-\bar\alpha_t)$", title="signal-to-noise ratio")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
