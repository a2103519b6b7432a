"""Typed settings, built once at start-up and passed down.

Sources, strongest first: keyword arguments, `IMAGEFORGE_*` environment variables,
then the TOML file (`IMAGEFORGE_CONFIG`, default `./imageforge.toml` when it exists).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from imageforge.billing import DEFAULT_PRICES, PriceBook, build_price_book
from imageforge.catalog import BASE_MODEL, DEFAULT_MODELS, ModelSpec, billing_tiers
from imageforge.config_errors import from_validation_error
from imageforge.engines.config import UpstreamConfig, normalize_base_url
from imageforge.engines.diffusers.config import DiffusersModelConfig
from imageforge.errors import ConfigurationError

DEFAULT_CONFIG_FILE = "imageforge.toml"
#: Standard Webhooks' schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
#: 10 h (about 27 hours in all).
DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: S3 refuses presigned links that live longer than 7 days.
MAX_PRESIGNED_SECONDS = 604_800
#: S3's bucket naming rules (which MinIO, R2 and Ceph follow too).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class ModelConfig(BaseModel):
    """Routing and limits of one public model name. Unset fields inherit the built-in
    definition of that name, or of `gpt-image-2` for a new name."""

    # A misspelt key (`engnie = "relay"`) would otherwise leave the model on its default.
    model_config = ConfigDict(extra="forbid")

    engine: str | None = Field(None, description="Engine that serves this model.")
    max_resolution: Literal["1k", "2k", "4k"] | None = None
    max_references: int | None = Field(None, ge=0, le=64)
    uses_quality: bool | None = None
    billing: Literal["quality", "resolution"] | None = None
    prices: dict[str, Decimal | str] | None = Field(
        None,
        description='Price per billing tier in currency units, e.g. {low = "0.006"}; '
        "an empty table makes the model free.",
    )
    # Upstream engines (openai, relay): see engines/upstreams.py.
    upstreams: list[str] | None = Field(
        None, description="Upstreams that serve this model, in failover order; default: all."
    )
    routing: Literal["ordered", "weighted"] = "ordered"
    upstream_weights: dict[str, float] = Field(
        default_factory=dict, description="Weighted routing: upstream name → weight (default 1)."
    )
    upstream_model: str | None = Field(
        None, description="Model name sent upstream; default: the public name."
    )
    # The diffusers engine: see engines/diffusers/config.py.
    diffusers: DiffusersModelConfig | None = Field(
        None, description="The local model folder and its settings (engine = diffusers)."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGEFORGE_",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(Path("data"), description="Where the database, images and secrets live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file in the data dir."
    )
    postgres_pool_size: int = Field(
        10, ge=1, le=1000, description="PostgreSQL connections per process, opened on demand."
    )
    public_base_url: str | None = Field(
        None,
        description="Base of image links, e.g. https://images.example.com; "
        "default: the URL the client called.",
    )
    image_url_ttl_seconds: int = Field(86_400, ge=1, description="Lifetime of an image link.")

    engine: str = Field("offline", description="Engine for every model without its own routing.")
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    render_processes: int = Field(1, ge=1, le=64, description="Offline engine render processes.")
    offline_font_files: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Font files the offline engine tries first for captions, comma-separated.",
    )
    upstreams: dict[str, UpstreamConfig] = Field(
        default_factory=dict, description="Named upstreams of the openai and relay engines."
    )
    relay_base_url: str | None = Field(
        None, description="Zero-config relay (engine = relay): the upstream task API's origin."
    )
    relay_api_key: SecretStr | None = Field(None, description="Key of the zero-config relay.")

    worker_concurrency: int = Field(
        4, ge=1, le=10_000, description="Tasks one worker runs at once."
    )
    claim_batch: int = Field(
        32, ge=1, le=10_000, description="Most tasks a worker claims in one round."
    )
    lease_seconds: float = Field(30.0, gt=0, description="A claim without heartbeat expires after.")
    heartbeat_seconds: float = Field(10.0, gt=0)
    rescue_interval_seconds: float = Field(5.0, gt=0)
    poll_interval_seconds: float = Field(
        0.5, gt=0, le=1.0, description="Fallback queue poll when no wake-up arrives."
    )
    max_attempts: int = Field(3, ge=1, le=100, description="Claims a task may use before failing.")
    progress_write_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="A task's progress is written to the database at most this often.",
    )
    events_keepalive_seconds: float = Field(
        15.0, gt=0, le=60, description="A quiet event stream gets a keep-alive comment this often."
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SCHEDULE),
        description="Seconds before each retry of a webhook that was not answered with a "
        "2xx (each with up to 25% jitter); after the last, the delivery has failed. "
        "Comma-separated in the environment.",
    )
    webhook_timeout_seconds: float = Field(
        15.0, gt=0, le=30, description="One webhook attempt: connect, send and answer."
    )
    webhook_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often a worker looks for webhooks due."
    )
    retry_base_seconds: float = Field(2.0, ge=0)
    retry_max_seconds: float = Field(60.0, ge=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)

    reference_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or CIDRs that reference URLs may reach although not public.",
    )
    reference_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    reference_max_pixels: int = Field(50_000_000, ge=1)
    reference_decoding_max_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Decoded reference pixels one process holds at once (about 4 bytes each).",
    )
    reference_timeout_seconds: float = Field(30.0, gt=0)

    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Largest accepted request body.")
    max_upload_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest body of `POST /v1/images/edits` (its uploaded images and fields).",
    )
    upload_retention_seconds: int = Field(
        7 * 86_400,
        ge=60,
        description="Uploaded edit images are deleted this long after their upload.",
    )
    openai_wait_seconds: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="How long the OpenAI-shaped routes wait for their images before answering "
        "with those done (or a 504 when none is).",
    )
    # Slow clients hold connections; these bound how long (a reverse proxy in front is the
    # usual protection at scale, and these hold where there is none).
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=3600, description="A request's headers must arrive within this (408)."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest wait for the next byte of a body (408)."
    )
    max_connections: int = Field(
        1000, ge=1, le=1_000_000, description="Open connections per server process; more: 503."
    )
    unavailable_retry_after_seconds: int = Field(
        5, ge=1, le=3600, description="`Retry-After` of a 503 while the database is unreachable."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Addresses or networks (CIDR) whose X-Forwarded-For/-Proto headers are "
        "believed, or `*` for any; comma-separated in the environment.",
    )
    storage_write_threads: int = Field(
        16, ge=1, le=256, description="Threads that write and fsync images on local disk."
    )
    url_signing_secret: SecretStr | None = Field(
        None,
        min_length=32,
        description="Secret of the signed /files links (at least 32 characters); default: "
        "generated into the data dir. Set the same one on every API node that does not "
        "share the data dir.",
    )

    # Where images live (see storage/): local disk, or an S3-compatible bucket.
    storage: Literal["local", "s3"] = Field(
        "local", description="`local` (files under the data dir) or `s3` (a bucket)."
    )
    s3_bucket: str | None = Field(None, description="Bucket of the s3 storage.")
    s3_prefix: str = Field("", description="Key prefix inside the bucket, e.g. `imageforge/`.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, R2, Ceph…); default: AWS S3."
    )
    s3_region: str | None = Field(
        None, description="Region; default: the AWS configuration's, else us-east-1."
    )
    s3_path_style: bool | None = Field(
        None,
        description="Path-style addressing (`endpoint/bucket/key`); default: on with an "
        "endpoint URL, off (virtual-hosted) on AWS.",
    )
    s3_links: Literal["presigned", "proxy", "public"] = Field(
        "presigned",
        description="`image_url`: a presigned GET on the bucket, the API's signed /files "
        "route streaming from the bucket, or `s3_public_base_url` + key.",
    )
    s3_public_base_url: str | None = Field(
        None, description="Public/CDN origin that serves the bucket's objects (links = public)."
    )
    s3_multipart_threshold_bytes: int = Field(
        8 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=5 * 1024 * 1024 * 1024,
        description="Images larger than this are uploaded in parts of this size.",
    )

    # Retention, counted from a task's finished_at; unset keeps everything.
    image_retention_seconds: int | None = Field(
        None, ge=1, description="Delete images this long after their task finished."
    )
    task_retention_seconds: int | None = Field(
        None, ge=60, description="Delete finished task rows (never ledger rows) after this."
    )
    janitor_interval_seconds: float = Field(
        3600.0, gt=0, description="How often one node sweeps orphans and applies retention."
    )
    orphan_grace_seconds: float = Field(
        3600.0,
        ge=0,
        description="Images no task points at are removed once at least this old.",
    )

    # Money and limits.
    currency: str = Field("USD", min_length=1, max_length=12, description="Unit of every price.")
    idempotency_ttl_seconds: int = Field(86_400, ge=60, description="How long keys are kept.")
    rate_limit_per_minute: int | None = Field(
        None, ge=1, description="Requests per minute per API key (429 beyond); unset: no limit."
    )
    max_unfinished_tasks: int | None = Field(
        None, ge=1, description="Queued or processing tasks per API key (429 beyond)."
    )
    redis_url: str | None = Field(
        None, description="Shares rate-limit counters between API nodes (redis://host:6379/0)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Operability: request lines, metrics, tracing (see request_log.py, metrics.py).
    access_log: bool = Field(
        True,
        description="One line per request: method, route, status, duration, key id, task id "
        "and request id (never a key; the prompt only with log_prompts).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` (readable) or `json` (one JSON object per line)."
    )
    log_prompts: bool = Field(False, description="Add a create request's prompt to its line.")
    metrics_enabled: bool = Field(
        True, description="Count requests and tasks, and serve them at /metrics (Prometheus)."
    )
    metrics_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="Bearer token that /metrics then requires (at least 16 characters); "
        "unset: /metrics is open.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port (on metrics_host) instead of the API's.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Interface of metrics_port; 0.0.0.0 to scrape from elsewhere."
    )
    otel_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP endpoint that receives traces (the tracing extra), e.g. "
        "http://collector:4318; the standard OTEL_EXPORTER_OTLP_* variables also turn it on.",
    )
    otel_service_name: str = Field("imageforge", min_length=1, description="service.name of spans.")

    @field_validator(
        "reference_allowlist",
        "offline_font_files",
        "trusted_proxies",
        mode="before",
    )
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _check_schedule(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return list(DEFAULT_WEBHOOK_RETRY_SCHEDULE)  # an unset variable, as compose passes it
        items = value.split(",") if isinstance(value, str) else value
        rule = (
            "webhook_retry_schedule: 1 to 50 delays in seconds, each above 0 and at most "
            "86400 (e.g. 5,300,1800)"
        )
        try:
            steps = [float(item) for item in items]
        except (TypeError, ValueError):
            raise ValueError(rule) from None
        if not steps or len(steps) > 50 or any(not 0 < step <= 86_400 for step in steps):
            raise ValueError(rule)
        return steps

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address, a CIDR network or *"
                ) from None
        return value

    @field_validator("public_base_url", "relay_base_url", "s3_endpoint_url", "s3_public_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        return normalize_base_url(value)

    @field_validator("metrics_port", "metrics_token", "otel_endpoint", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `IMAGEFORGE_METRICS_PORT=` (as compose passes an unset variable).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("image_retention_seconds", "task_retention_seconds", mode="before")
    @classmethod
    def _blank_keeps_forever(cls, value: Any) -> Any:
        # `IMAGEFORGE_IMAGE_RETENTION_SECONDS=` (as compose passes an unset variable).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("s3_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # Stored without slashes at either end; the s3 backend checks its parts.
        return value.strip().strip("/")

    @field_validator("s3_bucket")
    @classmethod
    def _check_bucket(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _BUCKET_NAME.fullmatch(value.strip()):
            raise ValueError(
                "s3_bucket: 3 to 63 lower-case letters, digits, dots and hyphens, "
                f"starting and ending with a letter or digit (got {value!r})"
            )
        return value.strip()

    @field_validator("heartbeat_seconds")
    @classmethod
    def _check_heartbeat(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds")
        if lease is not None and value >= lease:
            raise ValueError(f"must be shorter than lease_seconds ({lease})")
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> Settings:
        if self.storage != "s3":
            return self
        if self.s3_bucket is None:
            raise ValueError("s3_bucket: required when storage = s3")
        if self.s3_links == "public" and self.s3_public_base_url is None:
            raise ValueError("s3_public_base_url: required when s3_links = public")
        if self.s3_links == "presigned" and self.image_url_ttl_seconds > MAX_PRESIGNED_SECONDS:
            raise ValueError(
                f"image_url_ttl_seconds: at most {MAX_PRESIGNED_SECONDS} (7 days) with "
                f"s3_links = presigned, S3's limit for a presigned link (got "
                f"{self.image_url_ttl_seconds}); use s3_links = proxy for longer links"
            )
        return self

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        # A replayed Idempotency-Key answers with its task: the task must outlive the key.
        retention = self.task_retention_seconds
        if retention is not None and retention < self.idempotency_ttl_seconds:
            raise ValueError(
                "task_retention_seconds: must be at least idempotency_ttl_seconds "
                f"({self.idempotency_ttl_seconds}), since a replayed Idempotency-Key answers "
                f"with its task (got {retention})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings from the environment and the TOML file, if there is one. Anything
        wrong with them is a ConfigurationError naming the setting (config_errors.py)."""
        path = config_file_path(config_file)
        try:
            if path is None:
                return cls(**overrides)
            _check_file_keys(path, known=cls.model_fields)

            class _FromFile(cls):  # type: ignore[valid-type,misc]
                model_config = SettingsConfigDict(toml_file=path)

            return _FromFile(**overrides)
        except ValidationError as exc:
            raise from_validation_error(exc, cls, config_file=path, environ=os.environ) from None
        except SettingsError as exc:
            # pydantic-settings could not decode a value, e.g. invalid JSON in IMAGEFORGE_MODELS.
            field = re.search(r'field "(\w+)"', str(exc))
            raise ConfigurationError(
                "cannot be read: a table in the environment must be JSON",
                setting=field[1] if field else None,
                fix="write it as a JSON object, or move it to the TOML file",
            ) from None

    # Derived values -----------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        """The top-level settings, each also an `IMAGEFORGE_<NAME>` variable."""
        return list(cls.model_fields)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'imageforge.db').resolve()}"

    def model_specs(self) -> Mapping[str, ModelSpec]:
        """The public model catalogue: built-in models, then configured overrides/additions."""
        specs: dict[str, ModelSpec] = {
            name: ModelSpec(
                name=spec.name,
                max_resolution=spec.max_resolution,
                max_references=spec.max_references,
                uses_quality=spec.uses_quality,
                billing=spec.billing,
                engine=self.engine,
            )
            for name, spec in DEFAULT_MODELS.items()
        }
        for name, config in self.models.items():
            base = specs.get(name) or specs[BASE_MODEL]
            specs[name] = ModelSpec(
                name=name,
                max_resolution=config.max_resolution or base.max_resolution,
                max_references=(
                    config.max_references
                    if config.max_references is not None
                    else base.max_references
                ),
                uses_quality=(
                    config.uses_quality if config.uses_quality is not None else base.uses_quality
                ),
                billing=config.billing or base.billing,
                engine=config.engine or base.engine,
            )
        return specs

    def price_book(self) -> PriceBook:
        """Prices of every model: built-in defaults, replaced per model by configured ones.
        A model of a new name without `prices` inherits gpt-image-2's, like its other
        unset fields; `prices = {}` makes a model free."""
        configured = {name: config.prices for name, config in self.models.items()}
        specs = self.model_specs()
        inherited: dict[str, str] = {}
        for name, table in configured.items():
            if table is not None or name in DEFAULT_PRICES:
                continue
            spec, base = specs[name], specs[BASE_MODEL]
            if spec.billing != base.billing:
                raise ConfigurationError(
                    f"model {name!r} is billed by {spec.billing} but would inherit "
                    f"{BASE_MODEL}'s prices, which are by {base.billing}",
                    setting=f'models."{name}".prices',
                    fix=f"give it a prices table by {spec.billing} ("
                    + ", ".join(f'{tier} = "…"' for tier in billing_tiers(spec))
                    + "), or prices = {} to make it free",
                )
            inherited[name] = BASE_MODEL
        return build_price_book(self.currency, configured, inherited)


def config_file_path(config_file: str | Path | None = None) -> Path | None:
    """The TOML file settings are read from: the one named (`--config`), else
    `IMAGEFORGE_CONFIG`, else `./imageforge.toml` when it exists, else none."""
    named = config_file or os.environ.get("IMAGEFORGE_CONFIG")
    if named is None:
        return Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None
    path = Path(named)
    if not path.is_file():
        raise ConfigurationError(
            f"configuration file {path} does not exist",
            setting="--config" if config_file else "IMAGEFORGE_CONFIG",
            fix="name an existing TOML file, or leave it unset to use ./imageforge.toml "
            "(when present) and the environment",
        )
    return path


def _check_file_keys(path: Path, *, known: Mapping[str, object]) -> None:
    """The file must be TOML, and its top-level keys settings: a misspelt key would
    otherwise be ignored without a word (the environment may hold other variables)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"cannot be read ({exc})", setting=str(path), fix="check the file and its permissions"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"is not valid TOML ({exc})", setting=str(path), fix="correct the file's syntax"
        ) from None
    for key in document:
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            raise ConfigurationError(
                "is not a setting" + (f" (did you mean {near[0]}?)" if near else ""),
                setting=key,
                fix="remove it or correct its spelling (the README's Configuration section "
                "lists every setting)",
            )
