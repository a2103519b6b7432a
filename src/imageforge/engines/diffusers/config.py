"""Configuration of one public model served by the diffusers engine: the
`[models.NAME.diffusers]` table of the TOML file.

Only pydantic models and the per-family defaults live here, no torch: `settings.py` imports
this module, and a server without the `local` extra must still read its configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imageforge.engines.base import Quality

Family = Literal["sd", "sd-turbo", "sdxl", "sdxl-turbo", "flux", "flux-schnell", "sd3", "sd3-turbo"]
#: auto, cpu, mps, cuda or cuda:N (the N-th GPU).
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$"
Dtype = Literal["auto", "float16", "bfloat16", "float32"]

#: Short scheduler names accepted besides diffusers' own class names.
SCHEDULER_ALIASES: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
    "heun": "HeunDiscreteScheduler",
    "flow_match_euler": "FlowMatchEulerDiscreteScheduler",
}


def tier(quality: Quality | None) -> Quality:
    """The table row a request uses: models that ignore quality get `medium`."""
    return quality or "medium"


class PerQuality(BaseModel):
    """One figure per quality tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    medium: float
    high: float

    def at(self, quality: Quality | None) -> float:
        return float(getattr(self, tier(quality)))


class StepsPerQuality(BaseModel):
    """Denoising steps per quality tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: int = Field(ge=1, le=500)
    medium: int = Field(ge=1, le=500)
    high: int = Field(ge=1, le=500)

    def at(self, quality: Quality | None) -> int:
        return int(getattr(self, tier(quality)))


@dataclass(frozen=True)
class FamilyDefaults:
    """What a model family is trained for and how many steps it needs."""

    #: Pipeline class names (model_index.json `_class_name`) of the family.
    pipelines: tuple[str, ...]
    #: Square edge the model was trained at: generations use about this many pixels.
    base_size: int
    #: Both edges of a generation must be multiples of this (VAE scale x transformer patch).
    multiple: int
    steps: tuple[int, int, int]
    guidance: float
    #: The dtype on a GPU; CPUs always use float32.
    gpu_dtype: Literal["float16", "bfloat16"]


_SD = ("StableDiffusionPipeline",)
_SDXL = ("StableDiffusionXLPipeline",)
_FLUX = ("FluxPipeline",)
_SD3 = ("StableDiffusion3Pipeline",)

#: Turbo and schnell models are distilled to a few steps without classifier-free guidance.
FAMILIES: dict[str, FamilyDefaults] = {
    "sd": FamilyDefaults(_SD, 512, 8, (20, 30, 50), 7.5, "float16"),
    "sd-turbo": FamilyDefaults(_SD, 512, 8, (1, 2, 4), 0.0, "float16"),
    "sdxl": FamilyDefaults(_SDXL, 1024, 8, (20, 30, 50), 5.0, "float16"),
    "sdxl-turbo": FamilyDefaults(_SDXL, 512, 8, (1, 2, 4), 0.0, "float16"),
    "flux": FamilyDefaults(_FLUX, 1024, 16, (20, 28, 50), 3.5, "bfloat16"),
    "flux-schnell": FamilyDefaults(_FLUX, 1024, 16, (1, 2, 4), 0.0, "bfloat16"),
    "sd3": FamilyDefaults(_SD3, 1024, 16, (20, 28, 40), 4.5, "bfloat16"),
    "sd3-turbo": FamilyDefaults(_SD3, 1024, 16, (2, 4, 8), 0.0, "bfloat16"),
}


class IPAdapterConfig(BaseModel):
    """An IP-Adapter on disk, in the layout of the published ones (h94/IP-Adapter)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="Folder holding the weights file and the image encoder.")
    weight_name: str = Field(
        description="The weights file in `path`, e.g. ip-adapter_sd15.safetensors."
    )
    image_encoder: str = Field(
        "image_encoder", description="The CLIP vision encoder's folder, relative to `path`."
    )
    scale: float = Field(0.6, ge=0, le=2, description="How strongly the references steer.")


class DiffusersModelConfig(BaseModel):
    """A local diffusers model folder behind one public model name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="The model folder (model_index.json and its components).")
    family: Family | None = Field(
        None,
        description="Picks the defaults below; default: from the folder's pipeline class, "
        "'-turbo'/'-schnell' when the folder name says turbo, schnell or lightning.",
    )
    device: str = Field(
        "auto", pattern=DEVICE_PATTERN, description="auto: cuda, else mps, else cpu; or cuda:N."
    )
    dtype: Dtype = Field("auto", description="auto: the family's on a GPU, float32 on CPU.")
    scheduler: str | None = Field(
        None, description="A diffusers scheduler class or alias (euler, euler_a, dpmpp_2m, …)."
    )
    base_size: int | None = Field(
        None, ge=64, le=4096, description="Square edge the model is comfortable at."
    )
    steps: StepsPerQuality | None = Field(None, description="Denoising steps per quality.")
    guidance: PerQuality | None = Field(None, description="Classifier-free guidance per quality.")
    strength: PerQuality = Field(
        default_factory=lambda: PerQuality(low=0.5, medium=0.65, high=0.8),
        description="Image-to-image from the first reference: how far from it to go.",
    )
    ip_adapter: IPAdapterConfig | None = Field(
        None, description="Default: the model folder's ip_adapter/ subfolder, if it has one."
    )
    refine_strength: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="quality=high: a second image-to-image pass at the output size.",
    )
    refine_max_pixels: int = Field(
        2_097_152, ge=4096, description="The refinement pass runs at most at this many pixels."
    )
    max_batch: int | None = Field(
        None, ge=1, le=64, description="Queued tasks per pipeline call; default 4 on CUDA, else 1."
    )
    compile: bool = Field(False, description="torch.compile the denoiser (CUDA; slow first call).")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = SCHEDULER_ALIASES.get(value, value)
        if not name.endswith("Scheduler"):
            raise ValueError(
                f"must be a diffusers scheduler class (…Scheduler) or one of "
                f"{', '.join(SCHEDULER_ALIASES)} (got {value!r})"
            )
        return name

    @field_validator("strength")
    @classmethod
    def _strength_in_range(cls, value: PerQuality) -> PerQuality:
        for row in ("low", "medium", "high"):
            if not 0 < getattr(value, row) <= 1:
                raise ValueError(f"{row}: must be in (0, 1]")
        return value

    @field_validator("guidance")
    @classmethod
    def _guidance_not_negative(cls, value: PerQuality | None) -> PerQuality | None:
        for row in ("low", "medium", "high"):
            if value is not None and not 0 <= getattr(value, row) <= 50:
                raise ValueError(f"{row}: must be between 0 and 50")
        return value
