"""Builds the engines a worker runs from the settings and the environment.

The one place engines meet `Settings`: each engine is constructed from its own explicit
configuration, assembled here, and reads neither the settings nor `os.environ` itself.
`offline` gets its process count and font files; `diffusers` the `[models.NAME.diffusers]`
tables of its models; `openai` and `relay` get a `Router` of their upstreams,
with the keys read from the environment variables the configuration names. A new engine is
one builder in `_BUILDERS` (`(settings, environ) -> Engine`), taking from the settings what
it needs, e.g. its models' own tables.

An engine of the operator's own is named `package.module:ClassName` and constructed as
`ClassName(settings=settings)`, the plugin contract since the first release. It must provide
`async generate(request)` and `async aclose()`; `name` and `fetches_references` are optional
(default: the plugin's path, and True: the worker fetches `image_urls` for it).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imageforge.engines import Engine, GeneratedImage, GenerationRequest
from imageforge.engines.breaker import CircuitBreaker
from imageforge.engines.config import UpstreamConfig, UpstreamKind
from imageforge.engines.diffusers.config import DiffusersModelConfig
from imageforge.engines.upstreams import Route, Router, Upstream
from imageforge.errors import ConfigurationError, configuring
from imageforge.observability.metrics import metrics
from imageforge.settings import Settings

__all__ = [
    "OPENAI_DEFAULT_BASE_URL",
    "build_engine",
    "build_engines",
    "build_router",
    "check_engines",
]

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

EngineBuilder = Callable[[Settings, Mapping[str, str]], Engine]


def build_engines(
    names: Iterable[str], settings: Settings, *, environ: Mapping[str, str] | None = None
) -> dict[str, Engine]:
    """One instance per engine name in use, shared by every model routed to it."""
    return {name: build_engine(name, settings, environ=environ) for name in sorted(set(names))}


def build_engine(
    name: str, settings: Settings, *, environ: Mapping[str, str] | None = None
) -> Engine:
    env = os.environ if environ is None else environ
    builder = _BUILDERS.get(name)
    with configuring(engine_setting(name, settings)):
        if builder is not None:
            return builder(settings, env)
        if ":" in name:
            return _load_plugin(name, settings)
    raise _unknown_engine(name, settings)


def check_engines(
    names: Iterable[str], settings: Settings, *, environ: Mapping[str, str] | None = None
) -> None:
    """What `build_engines` would refuse, found without starting anything: no render
    process, no connection, no model loaded, no plugin constructed (its class is checked)."""
    env = os.environ if environ is None else environ
    for name in sorted(set(names)):
        check = _CHECKS.get(name)
        with configuring(engine_setting(name, settings)):
            if check is not None:
                check(settings, env)
            elif ":" in name:
                _check_plugin(_plugin_class(name, settings), name, settings)
            else:
                raise _unknown_engine(name, settings)


def _unknown_engine(name: str, settings: Settings) -> ConfigurationError:
    return ConfigurationError(
        f"unknown engine {name!r}",
        setting=engine_setting(name, settings),
        fix=f"use one of {', '.join(_BUILDERS)}, or a plugin as 'package.module:ClassName'",
    )


def engine_setting(name: str, settings: Settings) -> str:
    """Where the configuration names engine `name`: the global `engine`, or a model's."""
    for model, config in settings.models.items():
        if config.engine == name:
            return f'models."{model}".engine'
    return "engine"


def _offline_options(settings: Settings) -> Any:
    from imageforge.engines.offline import RenderOptions
    from imageforge.engines.offline.fonts import check_font_files

    try:
        check_font_files(settings.offline_font_files)
    except ValueError as exc:
        raise ConfigurationError(
            str(exc),
            setting="offline_font_files",
            fix="name TrueType/OpenType files that exist, or leave it empty for the "
            "machine's fonts",
        ) from None
    return RenderOptions(font_files=tuple(settings.offline_font_files))


def _offline(settings: Settings, environ: Mapping[str, str]) -> Engine:
    from imageforge.engines.offline import OfflineEngine

    return OfflineEngine(max_workers=settings.render_processes, options=_offline_options(settings))


def _openai(settings: Settings, environ: Mapping[str, str]) -> Engine:
    # Imported first: a missing extra is the error to report, before any missing key.
    from imageforge.engines.openai import OpenAIEngine

    return OpenAIEngine(build_router(settings, "openai", environ=environ))


def _relay(settings: Settings, environ: Mapping[str, str]) -> Engine:
    from imageforge.engines.relay import RelayEngine

    return RelayEngine(build_router(settings, "relay", environ=environ))


def _check_upstream_engine(kind: UpstreamKind) -> Callable[[Settings, Mapping[str, str]], None]:
    def check(settings: Settings, environ: Mapping[str, str]) -> None:
        # The engine's module first, as its builder imports it: a missing extra comes first.
        importlib.import_module(f"imageforge.engines.{kind}")
        from imageforge.engines.upstream_http import download_policy

        for upstream in build_router(settings, kind, environ=environ).upstreams.values():
            download_policy(upstream)

    return check


def _diffusers(settings: Settings, environ: Mapping[str, str]) -> Engine:
    from imageforge.engines.diffusers.engine import DiffusersEngine

    return DiffusersEngine(_diffusers_models(settings))


def _check_diffusers(settings: Settings, environ: Mapping[str, str]) -> None:
    from imageforge.engines.diffusers.engine import DiffusersEngine

    # One model at a time, so that an error names the table it comes from.
    for name, config in _diffusers_models(settings).items():
        try:
            DiffusersEngine({name: config}, preload=False)
        except ConfigurationError as exc:
            if exc.setting is None:
                exc.setting = f'models."{name}".diffusers'
            raise


def _diffusers_models(settings: Settings) -> dict[str, DiffusersModelConfig]:
    """The `[models.NAME.diffusers]` tables of the models routed to the diffusers engine."""
    routed = [spec.name for spec in settings.model_specs().values() if spec.engine == "diffusers"]
    models: dict[str, DiffusersModelConfig] = {}
    for name in routed:
        config = settings.models.get(name)
        if config is None or config.diffusers is None:
            raise ConfigurationError(
                f"model {name!r} is routed to the diffusers engine but has no "
                f'[models."{name}".diffusers] table',
                setting=f'models."{name}".diffusers',
                fix=f'add [models."{name}".diffusers] with path = its model folder',
            )
        models[name] = config.diffusers
    return models


_BUILDERS: dict[str, EngineBuilder] = {
    "offline": _offline,
    "openai": _openai,
    "relay": _relay,
    "diffusers": _diffusers,
}
#: Each builder's refusals without its side effects (processes, sessions, loaded models).
_CHECKS: dict[str, Callable[[Settings, Mapping[str, str]], None]] = {
    "offline": lambda settings, environ: _offline_options(settings),
    "openai": _check_upstream_engine("openai"),
    "relay": _check_upstream_engine("relay"),
    "diffusers": _check_diffusers,
}


# Upstream engines: the settings and the environment → a Router ------------------------------


def build_router(
    settings: Settings,
    kind: UpstreamKind,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Router:
    """The upstreams of `kind` and the route of every public model its engine serves."""
    env = os.environ if environ is None else environ
    configured = {
        name: config for name, config in settings.upstreams.items() if config.kind == kind
    }
    for name, config in settings.upstreams.items():
        if config.kind != kind and name == kind:
            raise ConfigurationError(
                f"upstream '{name}' has kind '{config.kind}', but that name is reserved "
                f"for the implicit {kind} upstream",
                setting=f"upstreams.{name}",
                fix=f"give the upstream another name, or kind = '{kind}'",
            )
    built: dict[str, Upstream] = {}

    def upstream(name: str, model: str) -> Upstream:
        if name in built:
            return built[name]
        config = configured.get(name)
        if config is None:
            if name != kind:
                other = settings.upstreams.get(name)
                raise ConfigurationError(
                    f"model '{model}' uses upstream '{name}', which is "
                    + (f"a {other.kind} upstream, not {kind}" if other else "not configured"),
                    setting=f'models."{model}".upstreams',
                    fix=f"name {kind} upstreams defined as [upstreams.NAME] "
                    f"(defined: {', '.join(configured) or 'none'})",
                )
            config = UpstreamConfig(kind=kind)
        built[name] = _build_upstream(name, config, settings, env, clock)
        return built[name]

    default_names = list(configured) or [kind]
    default_route = Route(model="*", upstreams=tuple(upstream(name, "*") for name in default_names))
    routes: dict[str, Route] = {}
    for model, spec in settings.model_specs().items():
        if spec.engine != kind:
            continue
        model_config = settings.models.get(model)
        names = (model_config.upstreams if model_config else None) or default_names
        if len(set(names)) != len(names):
            raise ConfigurationError(
                f"model '{model}' lists an upstream twice",
                setting=f'models."{model}".upstreams',
                fix="list each upstream once, in failover order",
            )
        weights: tuple[float, ...] | None = None
        if model_config is not None and model_config.routing == "weighted":
            unknown = set(model_config.upstream_weights) - set(names)
            if unknown:
                raise ConfigurationError(
                    f"names {sorted(unknown)}, which are not in the model's upstreams",
                    setting=f'models."{model}".upstream_weights',
                    fix=f"weigh only the upstreams it lists ({', '.join(names)})",
                )
            weights = tuple(float(model_config.upstream_weights.get(n, 1.0)) for n in names)
            if any(weight <= 0 for weight in weights):
                raise ConfigurationError(
                    "every weight must be greater than 0",
                    setting=f'models."{model}".upstream_weights',
                    fix="give each upstream a positive weight, or leave it out (weight 1)",
                )
        routes[model] = Route(
            model=model,
            upstreams=tuple(upstream(name, model) for name in names),
            weights=weights,
            upstream_model=model_config.upstream_model if model_config else None,
        )
    return Router(
        kind,
        built,
        routes,
        default_route,
        rng=rng,
        metrics=metrics() if settings.metrics_enabled else None,
    )


def _build_upstream(
    name: str,
    config: UpstreamConfig,
    settings: Settings,
    env: Mapping[str, str],
    clock: Callable[[], float],
) -> Upstream:
    implicit_relay = config.kind == "relay" and name == "relay" and name not in settings.upstreams
    base_url = config.base_url
    if config.kind == "openai":
        base_url = base_url or env.get("OPENAI_BASE_URL", "").rstrip("/") or OPENAI_DEFAULT_BASE_URL
    elif implicit_relay:
        base_url = settings.relay_base_url
    if not base_url:
        setting = "relay_base_url" if implicit_relay else f"upstreams.{name}.base_url"
        raise ConfigurationError(
            "the relay engine needs the address of the GPT Image 2 task API to relay to"
            if implicit_relay
            else f"relay upstream '{name}' has no base URL",
            setting=setting,
            fix="set it to that API's origin, e.g. https://relay.example.com",
        )

    key = env.get(config.key_env, "")
    if config.kind == "relay" and config.api_key_env is None and settings.relay_api_key:
        # The relay key setting, from IMAGEFORGE_RELAY_API_KEY or wherever settings found it.
        key = settings.relay_api_key.get_secret_value()
    if not key.strip():
        raise ConfigurationError(
            f"upstream '{name}' needs an API key, read from this environment variable, "
            "which is not set",
            setting=config.key_env,
            fix=f"export {config.key_env}=… in the environment of the worker"
            + (
                ""
                if config.api_key_env is not None
                else f", or name another variable in upstreams.{name}.api_key_env"
            ),
        )
    limit = config.max_concurrency or settings.worker_concurrency
    return Upstream(
        name=name,
        config=config,
        base_url=base_url,
        api_key=key.strip(),
        max_concurrency=limit,
        breaker=CircuitBreaker(
            failure_threshold=config.breaker.failure_threshold,
            cooldown_seconds=config.breaker.cooldown_seconds,
            clock=clock,
        ),
        slots=asyncio.Semaphore(limit),
    )


# Plugins ------------------------------------------------------------------------------------


def _plugin_class(path: str, settings: Settings) -> Any:
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"cannot load engine plugin {path!r} ({exc})",
            setting=engine_setting(path, settings),
            fix="name an importable class as 'package.module:ClassName' (is its package "
            "installed, or on PYTHONPATH?)",
        ) from exc


def _check_plugin(plugin: Any, path: str, settings: Settings) -> None:
    """`plugin` is the class or an instance; both must offer the engine's methods."""
    for method in ("generate", "aclose"):
        if not callable(getattr(plugin, method, None)):
            raise ConfigurationError(
                f"engine plugin {path!r} has no {method}() method",
                setting=engine_setting(path, settings),
                fix="an engine needs async generate(request) and async aclose()",
            )


def _load_plugin(path: str, settings: Settings) -> Engine:
    plugin = _plugin_class(path, settings)(settings=settings)
    _check_plugin(plugin, path, settings)
    return _Plugin(plugin, path)


class _Plugin:
    """A plugin seen through the Engine protocol, with the contract's defaults filled in."""

    def __init__(self, plugin: Any, path: str) -> None:
        self._plugin = plugin
        self.name: str = str(getattr(plugin, "name", path))
        self.fetches_references: bool = bool(getattr(plugin, "fetches_references", True))

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        image: GeneratedImage = await self._plugin.generate(request)
        return image

    async def aclose(self) -> None:
        await self._plugin.aclose()
