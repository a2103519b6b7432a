"""Configuration of the upstream services behind the `openai` and `relay` engines.

Only pydantic models live here: `settings.py` imports this module, so it must not import
settings (or anything that connects). Keys are never part of the configuration, only the
name of the environment variable that holds one, so a config file can be shared or logged.
The runtime reads these (`imageforge.engine_setup`) and hands each engine what it needs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

UpstreamKind = Literal["openai", "relay"]

#: Where each kind reads its key when `api_key_env` is not set: the SDK's own variable for
#: OpenAI, and the zero-config relay variable for relays.
DEFAULT_KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "relay": "IMAGEFORGE_RELAY_API_KEY",
}


def normalize_base_url(value: str | None) -> str | None:
    """An http(s) origin or prefix without its trailing slash; blank means unset."""
    if value is None or not value.strip():
        return None
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


class BreakerConfig(BaseModel):
    """When an upstream is taken out of rotation, and for how long."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(
        5, ge=1, le=1000, description="Consecutive retryable failures that open the circuit."
    )
    cooldown_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long an open circuit waits before one probe."
    )


class UpstreamConfig(BaseModel):
    """One upstream service: an OpenAI-style Images API, or another GPT Image 2 task API."""

    model_config = ConfigDict(extra="forbid")

    kind: UpstreamKind = Field(description="'openai' (Images API) or 'relay' (task API).")
    base_url: str | None = Field(
        None,
        description="openai: default OPENAI_BASE_URL, else https://api.openai.com/v1; "
        "relay: required, the origin that serves /v1/image2/images.",
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the key; default OPENAI_API_KEY (openai) "
        "or IMAGEFORGE_RELAY_API_KEY (relay).",
    )
    models: dict[str, str] = Field(
        default_factory=dict, description="Public model name → model name sent to this upstream."
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=10_000, description="Calls in flight here at once; default: the worker's."
    )
    timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="Longest one generation may take: the whole API call (openai), "
        "submission to finished image (relay).",
    )
    connect_timeout_seconds: float = Field(10.0, gt=0)
    request_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="relay: one submit, poll or download call; openai: downloading an "
        "image an answer links to.",
    )
    poll_initial_seconds: float = Field(0.5, gt=0, description="relay: first poll interval.")
    poll_max_seconds: float = Field(5.0, gt=0, description="relay: the interval grows to this.")
    max_image_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest image download accepted."
    )
    download_allowlist: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDRs, besides this upstream's own origin, that the images it "
        "links to may come from although they are not public (its file server, its CDN on a "
        "private network). Checked when the worker starts, like reference_allowlist.",
    )
    output_format: Literal["png", "jpeg", "webp"] = Field(
        "png", description="openai: the format asked of the Images API."
    )
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return normalize_base_url(value)

    @model_validator(mode="after")
    def _check_polling(self) -> UpstreamConfig:
        if self.poll_max_seconds < self.poll_initial_seconds:
            raise ValueError("poll_max_seconds must be at least poll_initial_seconds")
        return self

    @property
    def key_env(self) -> str:
        return self.api_key_env or DEFAULT_KEY_ENV[self.kind]
