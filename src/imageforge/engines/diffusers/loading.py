"""From configuration to loaded pipelines: the start-up checks, then loading a model folder.

The checks (`require_local_extra`, `prepare_model`) touch only the file system, so a bad
configuration stops the worker at start-up with a message naming the folder. Loading
(`load_model`) imports torch and diffusers and runs on the engine's own thread.

Offline by design: every `from_pretrained` gets `local_files_only=True`, and a path that is not
a local folder is refused before anything is loaded, so nothing ever reaches a model hub.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageforge.engines.diffusers.config import (
    FAMILIES,
    DiffusersModelConfig,
    FamilyDefaults,
    IPAdapterConfig,
    PerQuality,
    StepsPerQuality,
)
from imageforge.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

#: Distributions the engine imports, by import name; all come with the `local` extra.
LOCAL_EXTRA = ("torch", "diffusers", "transformers", "accelerate", "safetensors")
#: A model folder may carry its IP-Adapter here (weights file + image_encoder/).
IP_ADAPTER_FOLDER = "ip_adapter"
_IP_ADAPTER_FAMILIES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
_DISTILLED_WORDS = ("turbo", "schnell", "lightning")
# "owner/name" as the Hub writes it; a real folder of that name wins (checked first).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def require_local_extra() -> None:
    """Fail at start-up, not at the first task, when the `local` extra is not installed."""
    missing = [name for name in LOCAL_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"the diffusers engine needs the 'local' extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'imageforge[local]' (with the torch build for your "
            "GPU, see pytorch.org)"
        )


@dataclass(frozen=True)
class LocalModel:
    """One public model's configuration, checked against its folder and with the family's
    defaults filled in. No torch here: it is built at start-up."""

    name: str
    folder: Path
    pipeline_class: str
    family: str
    base_size: int
    multiple: int
    steps: StepsPerQuality
    guidance: PerQuality
    config: DiffusersModelConfig
    ip_adapter: IPAdapterConfig | None

    @property
    def load_key(self) -> tuple[object, ...]:
        """Models with equal keys share one loaded pipeline (and its memory)."""
        c = self.config
        return (self.folder, c.device, c.dtype, c.scheduler, self.ip_adapter, c.compile)


def prepare_model(name: str, config: DiffusersModelConfig) -> LocalModel:
    """Check the model folder and resolve the family defaults; raises ConfigurationError."""
    folder = _checked_folder(name, config.path)
    try:
        pipeline_class = read_pipeline_class(folder)
        family_name = config.family or _detect_family(folder, pipeline_class)
    except ValueError as exc:
        raise ConfigurationError(f"model {name!r}: {exc}") from None
    family = FAMILIES[family_name]
    if pipeline_class not in family.pipelines:
        raise ConfigurationError(
            f"model {name!r}: family {family_name!r} expects {' or '.join(family.pipelines)}, "
            f"but {folder} holds a {pipeline_class}"
        )
    return LocalModel(
        name=name,
        folder=folder,
        pipeline_class=pipeline_class,
        family=family_name,
        base_size=config.base_size or family.base_size,
        multiple=family.multiple,
        steps=config.steps or _default_steps(family),
        guidance=config.guidance or _default_guidance(family),
        config=config,
        ip_adapter=_ip_adapter(name, folder, pipeline_class, config.ip_adapter),
    )


def read_pipeline_class(folder: Path) -> str:
    """The `_class_name` in a diffusers model folder's model_index.json."""
    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{index}: cannot read the pipeline class ({exc})") from None
    if not isinstance(name, str):
        raise ValueError(f"{index}: has no _class_name")
    return name


def _checked_folder(name: str, path: Path) -> Path:
    folder = path.expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise ConfigurationError(
                f"model {name!r}: {folder} is not a diffusers model folder (no "
                "model_index.json); download the diffusers layout of the model, not a "
                "single-file checkpoint"
            )
        return folder.resolve()
    text = str(path)
    if not folder.exists() and not folder.is_absolute() and _HUB_ID.fullmatch(text):
        raise ConfigurationError(
            f"model {name!r}: path {text!r} is not a local folder; imageforge never downloads "
            f"models. Fetch it on a machine with internet: huggingface-cli download {text} "
            f"--local-dir /models/{text.rpartition('/')[2]}, then set path to that folder"
        )
    what = "is not a folder" if folder.exists() else "does not exist"
    raise ConfigurationError(f"model {name!r}: model folder {folder} {what}")


def _detect_family(folder: Path, pipeline_class: str) -> str:
    distilled = any(word in folder.name.lower() for word in _DISTILLED_WORDS)
    for family_name, family in FAMILIES.items():
        is_distilled = family_name.endswith(("-turbo", "-schnell"))
        if pipeline_class in family.pipelines and is_distilled == distilled:
            return family_name
    known = sorted({p for family in FAMILIES.values() for p in family.pipelines})
    raise ValueError(
        f"{folder} holds a {pipeline_class}, which has no defaults here (known: "
        f"{', '.join(known)}); set family in its [models.NAME.diffusers] table"
    )


def _default_steps(family: FamilyDefaults) -> StepsPerQuality:
    low, medium, high = family.steps
    return StepsPerQuality(low=low, medium=medium, high=high)


def _default_guidance(family: FamilyDefaults) -> PerQuality:
    return PerQuality(low=family.guidance, medium=family.guidance, high=family.guidance)


def _ip_adapter(
    name: str, folder: Path, pipeline_class: str, configured: IPAdapterConfig | None
) -> IPAdapterConfig | None:
    if configured is None:
        configured = _ip_adapter_in(folder / IP_ADAPTER_FOLDER)
        if configured is None:
            return None
    if pipeline_class not in _IP_ADAPTER_FAMILIES:
        raise ConfigurationError(
            f"model {name!r}: IP-Adapters are supported for "
            f"{' and '.join(_IP_ADAPTER_FAMILIES)} folders, not {pipeline_class}"
        )
    path = configured.path.expanduser().resolve()
    for needed in (path / configured.weight_name, path / configured.image_encoder / "config.json"):
        if not needed.is_file():
            raise ConfigurationError(f"model {name!r}: IP-Adapter file {needed} does not exist")
    return configured.model_copy(update={"path": path})


def _ip_adapter_in(folder: Path) -> IPAdapterConfig | None:
    """The IP-Adapter a model folder carries: one weights file beside image_encoder/."""
    if not folder.is_dir():
        return None
    weights = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    if len(weights) != 1:
        raise ConfigurationError(
            f"{folder}: an IP-Adapter folder holds exactly one weights file (found "
            f"{', '.join(weights) or 'none'}); or configure ip_adapter explicitly"
        )
    return IPAdapterConfig(path=folder, weight_name=weights[0])


# --------------------------------------------------------------------------------------------
# Loading (torch): runs on the engine's thread
# --------------------------------------------------------------------------------------------


def resolve_device(wanted: str) -> torch.device:
    import torch

    if wanted == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if wanted.startswith("cuda"):
        index = int(wanted.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {wanted!r} is configured but this torch ({torch.__version__}) sees "
                f"{torch.cuda.device_count()} CUDA GPU(s)"
            )
    if wanted == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' is configured but this machine has no MPS device")
    return torch.device(wanted)


def resolve_dtype(wanted: str, device: torch.device, family: str) -> torch.dtype:
    import torch

    if wanted == "auto":
        wanted = "float32" if device.type == "cpu" else FAMILIES[family].gpu_dtype
    dtype: torch.dtype = getattr(torch, wanted)
    return dtype


def load_text_to_image(model: LocalModel, device: torch.device, dtype: torch.dtype) -> Any:
    """The model folder's text-to-image pipeline on `device`, from local files only."""
    from diffusers import AutoPipelineForText2Image

    extra: dict[str, Any] = {}
    if model.pipeline_class == "StableDiffusionPipeline":
        # Not part of the folder we load from, and never a download.
        extra = {
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    pipeline = AutoPipelineForText2Image.from_pretrained(
        model.folder, dtype=dtype, local_files_only=True, **extra
    )
    if model.config.scheduler is not None:
        pipeline.scheduler = _scheduler(model.config.scheduler, pipeline.scheduler.config)
    if model.ip_adapter is not None:
        adapter = model.ip_adapter
        pipeline.load_ip_adapter(
            str(adapter.path),
            subfolder="",
            weight_name=adapter.weight_name,
            image_encoder_folder=adapter.image_encoder,
            local_files_only=True,
        )
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def image_to_image(text_to_image: Any) -> Any:
    """The image-to-image pipeline sharing every module (and its memory) with `text_to_image`."""
    from diffusers import AutoPipelineForImage2Image

    pipeline = AutoPipelineForImage2Image.from_pipe(text_to_image)
    # from_pipe builds a new pipeline object, with its own (enabled) progress bar.
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def optimise(pipeline: Any, device: torch.device, *, compile_denoiser: bool) -> None:
    """The speed-ups the engine applies: PyTorch's fused attention (SDPA) wherever a layer
    still runs diffusers' unfused processor, channels-last convolutions on CUDA, and on request
    torch.compile of the denoiser (minutes on its first call at each size and batch)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = getattr(pipeline, "unet", None)
    denoiser = unet if unet is not None else pipeline.transformer
    if unet is not None:
        processors = unet.attn_processors
        # One by one: IP-Adapter layers keep their own processors.
        fused = {
            name: AttnProcessor2_0() if type(processor) is AttnProcessor else processor
            for name, processor in processors.items()
        }
        if any(fused[name] is not processors[name] for name in processors):
            unet.set_attn_processor(fused)
    if device.type == "cuda":
        denoiser.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    if compile_denoiser:
        compiled = torch.compile(denoiser)
        if unet is not None:
            pipeline.unet = compiled
        else:
            pipeline.transformer = compiled


def check_scheduler(model_name: str, scheduler: str) -> None:
    """Refuse, at start-up, a scheduler that diffusers does not have (imports diffusers)."""
    import diffusers

    if not hasattr(getattr(diffusers, scheduler, None), "from_config"):
        raise ConfigurationError(f"model {model_name!r}: diffusers has no scheduler {scheduler!r}")


def _scheduler(name: str, config: Any) -> Any:
    import diffusers

    scheduler_class = getattr(diffusers, name, None)
    if scheduler_class is None or not hasattr(scheduler_class, "from_config"):
        raise ValueError(f"diffusers has no scheduler {name!r}")
    return scheduler_class.from_config(config)
