"""Running plans through a loaded model: one pipeline call per batch of compatible plans.

Everything here runs on the engine's thread, the only one that touches torch, so pipelines
need no locks. Progress and cancellation cross threads through the two callables a batch is
given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from imageforge.engines.diffusers.loading import (
    LocalModel,
    image_to_image,
    load_text_to_image,
    optimise,
    resolve_device,
    resolve_dtype,
)
from imageforge.engines.diffusers.plan import Pass, Plan
from imageforge.engines.diffusers.sizes import fit_exactly

#: CUDA batches this many queued tasks per pipeline call unless configured otherwise; elsewhere
#: a batch buys nothing (a CPU is busy with one image).
CUDA_MAX_BATCH = 4
#: Progress figures: denoising fills 0–95 (split between the passes), 100 means delivered.
DENOISED = 95
FIRST_PASS_SHARE = 0.6


@dataclass
class Inputs:
    """A plan's decoded reference images, prepared off this thread."""

    #: mode "image": the first reference, fitted to the first pass's size.
    init_image: Image.Image | None = None
    #: mode "ip_adapter": every reference.
    references: list[Image.Image] = field(default_factory=list)


@dataclass
class Batch:
    plans: Sequence[Plan]
    inputs: Sequence[Inputs]
    #: Called with a 0–95 figure after each step.
    report: Callable[[int], None]
    #: True once nobody waits for the batch any more: the pipeline stops at the next step.
    abandoned: Callable[[], bool]


class LoadedModel:
    """One model folder in memory: text-to-image and image-to-image sharing their weights."""

    def __init__(self, model: LocalModel) -> None:
        self.device = resolve_device(model.config.device)
        dtype = resolve_dtype(model.config.dtype, self.device, model.family)
        self.text_to_image = load_text_to_image(model, self.device, dtype)
        optimise(self.text_to_image, self.device, compile_denoiser=model.config.compile)
        self.image_to_image = image_to_image(self.text_to_image)
        self.max_batch = model.config.max_batch or (
            CUDA_MAX_BATCH if self.device.type == "cuda" else 1
        )
        self.ip_adapter = model.ip_adapter

    def run(self, batch: Batch) -> list[Image.Image] | None:
        """The batch's images at their final pass's size; None if it was abandoned."""
        plans = batch.plans
        head = plans[0]
        first_end = DENOISED if head.refine is None else int(DENOISED * FIRST_PASS_SHARE)
        if head.mode == "image":
            images = self._pass(
                batch, head.first, 0, first_end, image=[i.init_image for i in batch.inputs]
            )
        else:
            images = self._pass(batch, head.first, 0, first_end)
        if images is None or head.refine is None:
            return images
        refine = head.refine
        upscaled = [fit_exactly(image, refine.width, refine.height) for image in images]
        return self._pass(batch, refine, first_end, DENOISED, image=upscaled)

    def _pass(
        self,
        batch: Batch,
        step: Pass,
        start: int,
        end: int,
        image: Sequence[Image.Image | None] | None = None,
    ) -> list[Image.Image] | None:
        import torch

        plans = batch.plans

        def on_step_end(
            pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            total = max(1, pipeline.num_timesteps)
            batch.report(start + (end - start) * (index + 1) // total)
            if batch.abandoned():
                # Diffusers' documented way to stop: the remaining steps are skipped.
                pipeline._interrupt = True
            return tensors

        arguments: dict[str, Any] = {
            "prompt": [plan.prompt for plan in plans],
            "num_inference_steps": step.steps,
            "guidance_scale": plans[0].guidance,
            # CPU generators: the same seed gives the same noise on every device.
            "generator": [torch.Generator("cpu").manual_seed(plan.seed) for plan in plans],
            "callback_on_step_end": on_step_end,
            "output_type": "pil",
        }
        arguments.update(self._ip_adapter_arguments(batch))
        with torch.inference_mode():
            if image is None:
                output = self.text_to_image(width=step.width, height=step.height, **arguments)
            else:
                output = self.image_to_image(image=image, strength=step.strength, **arguments)
        if batch.abandoned():
            return None
        images: list[Image.Image] = output.images
        return images

    def _ip_adapter_arguments(self, batch: Batch) -> dict[str, Any]:
        """An IP-Adapter model takes reference embeddings on every call; without references
        it gets a blank image at scale 0, which adds exactly nothing to the attention."""
        if self.ip_adapter is None:
            return {}
        (plan,) = batch.plans  # IP-Adapter plans never batch
        (inputs,) = batch.inputs
        if plan.mode == "ip_adapter":
            self.text_to_image.set_ip_adapter_scale(self.ip_adapter.scale)
            return {"ip_adapter_image": [inputs.references]}
        self.text_to_image.set_ip_adapter_scale(0.0)
        return {"ip_adapter_image": [[Image.new("RGB", (224, 224))]]}
