"""What one request asks of the pipelines: mode, sizes, steps, guidance, strength and seed.

Pure: computed on the event loop from the request and the model's resolved configuration, so
every rule here is testable without torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from imageforge.engines.base import GenerationRequest
from imageforge.engines.diffusers.loading import LocalModel
from imageforge.engines.diffusers.sizes import generation_size, refinement_size

Mode = Literal["text", "image", "ip_adapter"]

#: Seeds are 32-bit: what numpy and most diffusion front ends accept, exact in JSON numbers.
SEED_RANGE = 2**32


@dataclass(frozen=True)
class Pass:
    """One pipeline call."""

    width: int
    height: int
    #: `num_inference_steps` as diffusers takes it.
    steps: int
    #: Image-to-image only: the share of the schedule that runs.
    strength: float | None = None

    @property
    def steps_run(self) -> int:
        """The denoising steps diffusers actually runs (image-to-image skips the rest)."""
        if self.strength is None:
            return self.steps
        return min(int(self.steps * self.strength), self.steps)


@dataclass(frozen=True)
class Plan:
    model: LocalModel
    prompt: str
    width: int
    height: int
    seed: int
    guidance: float
    #: text: text-to-image; image: image-to-image from the first reference;
    #: ip_adapter: text-to-image steered by every reference.
    mode: Mode
    first: Pass
    #: quality=high with `refine_strength`: image-to-image at (about) the output size.
    refine: Pass | None = None

    @property
    def steps_run(self) -> int:
        return self.first.steps_run + (self.refine.steps_run if self.refine else 0)

    @property
    def batch_key(self) -> tuple[object, ...] | None:
        """Plans with equal keys can share one pipeline call; None: this one runs alone.

        IP-Adapter plans never batch: diffusers shares one set of reference embeddings
        across a batch, and each task has its own references."""
        if self.model.ip_adapter is not None:
            return None
        return (self.model.load_key, self.mode, self.first, self.refine, self.guidance)


def plan_generation(model: LocalModel, request: GenerationRequest) -> Plan:
    config = model.config
    quality = request.quality
    steps = model.steps.at(quality)
    gen_w, gen_h = generation_size(
        request.width, request.height, base_size=model.base_size, multiple=model.multiple
    )
    mode: Mode = "text"
    first = Pass(gen_w, gen_h, steps)
    if request.references:
        if model.ip_adapter is not None:
            mode = "ip_adapter"
        else:
            mode = "image"
            strength = config.strength.at(quality)
            first = Pass(gen_w, gen_h, image_to_image_steps(steps, strength), strength)
    refine = None
    if quality == "high" and request.width * request.height > gen_w * gen_h:
        ref_w, ref_h = refinement_size(
            request.width,
            request.height,
            max_pixels=config.refine_max_pixels,
            multiple=model.multiple,
        )
        refine_strength = config.refine_strength
        if ref_w * ref_h > gen_w * gen_h and refine_strength is not None:
            refine = Pass(
                ref_w, ref_h, image_to_image_steps(steps, refine_strength), refine_strength
            )
    return Plan(
        model=model,
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        seed=request.seed if request.seed is not None else derive_seed(request),
        guidance=model.guidance.at(quality),
        mode=mode,
        first=first,
        refine=refine,
    )


def image_to_image_steps(steps: int, strength: float) -> int:
    """`num_inference_steps` for image-to-image so that at least one step runs.

    Diffusers runs `int(steps × strength)` steps; at 0 (a turbo model's single step at
    strength 0.5) it fails deep inside with "cannot reshape tensor of 0 elements". Below one
    step, the schedule is lengthened just enough that one runs."""
    while int(steps * strength) < 1:
        steps += 1
    return steps


def derive_seed(request: GenerationRequest) -> int:
    """A seed fixed by the task: every attempt at one task draws the same image.

    Without a task id (an engine driven directly) the prompt and size decide instead."""
    source = request.task_id or f"{request.prompt}\0{request.width}x{request.height}"
    digest = hashlib.sha256(b"imageforge-seed\0" + source.encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_RANGE
