"""Diffusers pipelines with random weights, built from architecture configs and saved as the
model folders the engine loads.

No weights can be downloaded where imageforge is developed and tested, yet the engine must be
exercised through its real loading code. Random weights produce noise, but they cost exactly
the compute of trained ones, so the same builders serve the tests (tiny architectures, a few
MB, milliseconds per step) and the benchmark (the published SD-Turbo and SDXL shapes).

Imports torch, diffusers and transformers: only the `local` extra provides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from imageforge.engines.diffusers.loading import IP_ADAPTER_FOLDER

Layout = Literal["sd", "sdxl"]

IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"


@dataclass(frozen=True)
class Architecture:
    """Constructor arguments of each component of one pipeline layout."""

    layout: Layout
    unet: dict[str, Any]
    vae: dict[str, Any]
    #: One config per text encoder: SD has one, SDXL two (the second with a projection).
    text_encoders: tuple[dict[str, Any], ...]
    scheduler: dict[str, Any]
    #: Turbo models: Euler with trailing timesteps, which gives a clean image in one step.
    ancestral: bool = False


_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "max_position_embeddings": 77,
    "vocab_size": 1000,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_TINY_VAE = {
    "block_out_channels": (8, 8, 16, 16),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "norm_num_groups": 2,
    "layers_per_block": 1,
    "sample_size": 64,
}
#: Two blocks of 32 and 64 channels: ~1 M parameters, milliseconds per step at 64².
_TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "norm_num_groups": 8,
}
#: Diffusers' own scheduler settings for SD-family checkpoints; steps_offset=1 avoids its
#: deprecation warning about an outdated config.
_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
}

TINY_SD = Architecture(
    layout="sd",
    unet={**_TINY_UNET, "cross_attention_dim": 32},
    vae=_TINY_VAE,
    text_encoders=(_TINY_TEXT,),
    scheduler=_SCHEDULER,
    ancestral=True,
)

TINY_SDXL = Architecture(
    layout="sdxl",
    unet={
        **_TINY_UNET,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "transformer_layers_per_block": (1, 1),
        # Six time ids of 8 each, plus the second encoder's pooled projection (32).
        "projection_class_embeddings_input_dim": 6 * 8 + 32,
        # Both encoders' hidden states side by side.
        "cross_attention_dim": 64,
    },
    vae=_TINY_VAE,
    text_encoders=(_TINY_TEXT, _TINY_TEXT),
    scheduler=_SCHEDULER,
)

# The published configs (model_index.json and each component's config.json) of
# stabilityai/sd-turbo (Stable Diffusion 2.1 base) and stabilityai/stable-diffusion-xl-base-1.0.
_FULL_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}
_VOCAB_SIZE = 49408

SD_TURBO = Architecture(
    layout="sd",
    unet={
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "sample_size": 64,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    vae={**_FULL_VAE, "sample_size": 768, "scaling_factor": 0.18215},
    text_encoders=(
        {  # OpenCLIP ViT-H/14, penultimate layer: 23 layers
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "projection_dim": 512,
            "hidden_act": "gelu",
            "vocab_size": _VOCAB_SIZE,
        },
    ),
    scheduler=_SCHEDULER,
)

SDXL = Architecture(
    layout="sdxl",
    unet={
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "sample_size": 128,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    vae={**_FULL_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoders=(
        {  # CLIP ViT-L/14
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
            "vocab_size": _VOCAB_SIZE,
        },
        {  # OpenCLIP ViT-bigG/14
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_attention_heads": 20,
            "num_hidden_layers": 32,
            "projection_dim": 1280,
            "hidden_act": "gelu",
            "vocab_size": _VOCAB_SIZE,
        },
    ),
    scheduler=_SCHEDULER,
)

ARCHITECTURES: dict[str, Architecture] = {
    "tiny-sd": TINY_SD,
    "tiny-sdxl": TINY_SDXL,
    "sd-turbo": SD_TURBO,
    "sdxl": SDXL,
}


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes: no merges, every prompt still tokenizes.

    CLIP's real vocabulary is a 1.6 MB download; the text encoder's cost depends only on the
    sequence length (77), not on which ids fill it.
    """
    alphabet = _byte_alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 2, "!": 1}
    for symbol in alphabet:
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _byte_alphabet() -> list[str]:
    # GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others are
    # shifted above 255, so that every byte has a visible, non-space symbol.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            symbols.append(256 + shift)
            shift += 1
    return [chr(code) for code in symbols]


def build_pipeline(
    architecture: Architecture,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline of `architecture` with random weights (reproducible from `seed`), built
    directly on `device`: initialising billions of weights on a CPU first takes minutes."""
    torch.manual_seed(seed)
    # Outside the device context: schedulers keep their tables on the CPU (numpy reads them).
    scheduler_class = (
        EulerAncestralDiscreteScheduler if architecture.ancestral else EulerDiscreteScheduler
    )
    scheduler = scheduler_class(**architecture.scheduler)
    with torch.device(device):
        unet = UNet2DConditionModel(**architecture.unet)
        vae = AutoencoderKL(**architecture.vae)
        encoders = [
            (CLIPTextModel if index == 0 else CLIPTextModelWithProjection)(CLIPTextConfig(**c))
            for index, c in enumerate(architecture.text_encoders)
        ]
    if architecture.layout == "sd":
        (text_encoder,) = encoders
        pipeline: StableDiffusionPipeline | StableDiffusionXLPipeline = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=byte_level_tokenizer(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
    else:
        first, second = encoders
        pipeline = StableDiffusionXLPipeline(
            unet=unet,
            vae=vae,
            text_encoder=first,
            text_encoder_2=second,
            tokenizer=byte_level_tokenizer(),
            tokenizer_2=byte_level_tokenizer(),
            scheduler=scheduler,
        )
    return pipeline if dtype == torch.float32 else pipeline.to(dtype=dtype)


def save_model_folder(
    architecture: Architecture,
    folder: Path,
    *,
    seed: int = 0,
    ip_adapter: bool = False,
) -> Path:
    """Save a random pipeline as a diffusers model folder (model_index.json, one subfolder per
    component, safetensors); with `ip_adapter`, also an IP-Adapter under `ip_adapter/`."""
    pipeline = build_pipeline(architecture, seed=seed)
    pipeline.save_pretrained(folder, safe_serialization=True)
    if ip_adapter:
        save_ip_adapter(pipeline.unet, folder / IP_ADAPTER_FOLDER, seed=seed)
    return folder


def save_ip_adapter(unet: UNet2DConditionModel, folder: Path, *, seed: int = 0) -> None:
    """An IP-Adapter for `unet` in the layout of the published ones (h94/IP-Adapter): a CLIP
    vision encoder in `image_encoder/`, and one safetensors file holding the image projection
    (`image_proj.*`) and a key/value projection per cross-attention layer (`ip_adapter.*`)."""
    torch.manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim
    embed_dim = 32
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            projection_dim=embed_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=4,
        )
    )
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    tokens = 4  # image tokens per reference: the plain IP-Adapter's projection
    tensors: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(tokens * cross_dim, embed_dim) * 0.02,
        "image_proj.proj.bias": torch.zeros(tokens * cross_dim),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    # Diffusers numbers the attention processors in order and the cross-attention ones are the
    # odd ids (1, 3, 5, …), as in the published checkpoints.
    cross_attention = [
        name for name in unet.attn_processors if not name.endswith("attn1.processor")
    ]
    for index, name in enumerate(cross_attention):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.out_features
        key = 2 * index + 1
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross_dim) * 0.02
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross_dim) * 0.02
    save_file(tensors, str(folder / IP_ADAPTER_WEIGHTS))
