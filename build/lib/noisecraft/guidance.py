"""Conditioning and classifier-free guidance.

`condition()` turns what a user asks for (a class, a prompt, a negative prompt) into the model's `cond`
keywords. A class-conditional model takes `class_labels`; its classes can be named by index, by name
(case-insensitive) or by a prompt that names one ("a photo of a sneaker"). A text-conditional model
takes the prompt's token states (`context`, `context_mask`); a prompt longer than its encoder's token
limit is truncated with a warning. An empty prompt means unconditional. The CLI and the server share
these rules.

`guided()` is classifier-free guidance (Ho & Salimans 2021): eps = eps_uncond + w (eps_cond - eps_uncond),
with the conditional and unconditional passes batched into one forward call. A negative prompt takes
the place of the unconditional branch, so sampling moves away from it.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

from noisecraft.errors import NoisecraftError


@dataclass
class Condition:
    """The keywords for the model, those for the negative (or unconditional) branch of guidance,
    and a label for image metadata."""

    cond: dict
    negative: dict | None = None
    label: str | None = None             # the class or prompt; None when unconditional (no guidance then)


def _aliases(name: str) -> list[str]:
    """The words that name a class: "T-shirt/top" is named by "t-shirt" and by "top"."""
    return [a.strip().lower() for a in name.split("/") if a.strip()]


def class_index(names: list[str], num_classes: int, value: int | str) -> int:
    """A class given as an index or a name (case-insensitive), checked."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < num_classes:
            return index
    else:
        key = str(value).strip().lower()
        for i, name in enumerate(names):
            if key == name.lower() or key in _aliases(name):
                return i
    raise NoisecraftError(f"unknown class {value!r}: use an index below {num_classes} or one of {', '.join(names)}")


def class_in_prompt(names: list[str], prompt: str) -> int | None:
    """The one class a prompt names, or None when it names none. Longer names win ("t-shirt" over "shirt"),
    plurals count ("sneakers"); a prompt naming two different classes is an error."""
    text, found = prompt.lower(), set()
    for alias, i in sorted(((a, i) for i, n in enumerate(names) for a in _aliases(n)), key=lambda p: -len(p[0])):
        pattern = rf"(?<![\w-]){re.escape(alias)}(e?s)?(?![\w-])"
        if re.search(pattern, text):
            found.add(i)
            text = re.sub(pattern, " ", text)
    if len(found) > 1:
        raise NoisecraftError(f"the prompt names more than one class ({', '.join(names[i] for i in sorted(found))}): "
                              "this model draws one class per image")
    return found.pop() if found else None


def class_condition(model, n: int, class_: int | str | None = None, prompt: str | None = None,
                    negative_prompt: str | None = None) -> Condition:
    """Condition n images on a class given directly or named in a prompt; a negative prompt naming a
    class replaces the unconditional branch of guidance with that class."""
    config = model.config
    names = config.class_names or [str(i) for i in range(config.unet.num_classes)]
    if not config.unet.num_classes:
        if class_ is not None:
            raise NoisecraftError("this model is unconditional: it takes no class, leave it out")
        if (prompt or "").strip() or (negative_prompt or "").strip():
            raise NoisecraftError("this model is unconditional: it takes no prompt, leave it out")
        return Condition({})
    if class_ is not None and (prompt or "").strip():
        raise NoisecraftError("give a class or a prompt, not both")
    index = class_index(names, config.unet.num_classes, class_) if class_ is not None else None
    if index is None and (prompt or "").strip():
        index = class_in_prompt(names, prompt)
        if index is None:
            raise NoisecraftError(f"this model is class-conditional and takes no free text: the prompt must name "
                                  f"one of its classes ({', '.join(names)})")
    negative = None
    if (negative_prompt or "").strip():
        neg = class_in_prompt(names, negative_prompt)
        if neg is None:
            raise NoisecraftError(f"the negative prompt must name one of this model's classes ({', '.join(names)})")
        negative = {"class_labels": torch.full((n,), neg, dtype=torch.long)}
    if index is None:
        if negative is not None:
            raise NoisecraftError("a negative prompt needs a class or a prompt to steer towards")
        return Condition({})                                   # empty prompt: unconditional
    return Condition({"class_labels": torch.full((n,), index, dtype=torch.long)}, negative, names[index])


def text_condition(model, n: int, prompt: str | None, negative_prompt: str | None = None) -> Condition:
    """Condition n images on a prompt; the negative prompt (default: the empty one) is guidance's other branch."""
    encoder = model.text_encoder()
    prompt, negative_prompt = (prompt or "").strip(), (negative_prompt or "").strip()
    states, mask, truncated = encoder.encode([prompt, negative_prompt])
    for what, cut in zip(("the prompt", "the negative prompt"), truncated):
        if cut:
            warnings.warn(f"{what} is longer than the text encoder's {encoder.max_tokens} tokens and was truncated")
    as_cond = lambda i: {"context": states[i:i + 1].expand(n, -1, -1), "context_mask": mask[i:i + 1].expand(n, -1)}
    return Condition(as_cond(0), as_cond(1), prompt or None)


def condition(model, n: int, class_: int | str | None = None, prompt: str | None = None,
              negative_prompt: str | None = None) -> Condition:
    """The condition for n images from whatever the user gave, by the kind of model."""
    if model.config.cond == "text":
        if class_ is not None:
            raise NoisecraftError("this model is text-conditional: describe the image with a prompt instead of a class")
        return text_condition(model, n, prompt, negative_prompt)
    return class_condition(model, n, class_, prompt, negative_prompt)


def guided(model, cond: dict, scale: float, negative: dict | None = None):
    """Wrap `model` so that calling it with (x, t) returns the guided prediction for `cond`. The second
    branch is `negative` (a negative prompt) when given, else the model's "no condition", `model.null_cond(cond)`."""
    if not cond:
        raise NoisecraftError("guidance needs a condition: pass a class or a prompt, or set guidance to 1")
    null_cond = getattr(model, "null_cond", None)
    if negative is None and null_cond is None:
        raise NoisecraftError("this model has no unconditional mode, so guidance cannot be used: set guidance to 1")
    uncond = negative if negative is not None else null_cond(cond)
    if set(uncond) != set(cond):
        raise NoisecraftError(f"the negative condition has {sorted(uncond)} but the condition has {sorted(cond)}")
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}

    def forward(x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    return forward
