"""Settings: environment, TOML file, derived values and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from imageforge.errors import ConfigurationError
from imageforge.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("IMAGEFORGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings.load()
    assert settings.data_dir == Path("data")
    assert settings.resolved_database_url.endswith("/data/imageforge.db")
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.image_url_ttl_seconds == 86_400
    assert settings.public_base_url is None
    assert settings.reference_allowlist == []
    # Operators' knobs, at the values that were hard-coded before they were settings.
    assert settings.storage_write_threads == 16
    assert settings.unavailable_retry_after_seconds == 5
    assert settings.trusted_proxies == ["127.0.0.1", "::1"]
    # What a connection may hold: the defaults the outside probe's issue asked for.
    assert settings.header_timeout_seconds == 10
    assert settings.body_timeout_seconds == 30
    assert settings.max_connections == 1000
    specs = settings.model_specs()
    assert set(specs) == {"gpt-image-2", "gpt-image-2-r"}
    assert specs["gpt-image-2"].engine == "offline"


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFORGE_DATA_DIR", "/srv/forge")
    monkeypatch.setenv("IMAGEFORGE_PUBLIC_BASE_URL", "https://img.example.com/")
    monkeypatch.setenv("IMAGEFORGE_REFERENCE_ALLOWLIST", " 127.0.0.1, images.intranet ,10.0.0.0/8")
    monkeypatch.setenv("IMAGEFORGE_WORKER_CONCURRENCY", "16")
    monkeypatch.setenv("IMAGEFORGE_TRUSTED_PROXIES", "10.0.0.0/8, fd00::1")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's variable: not ours, ignored
    settings = Settings.load()
    assert settings.trusted_proxies == ["10.0.0.0/8", "fd00::1"]
    assert settings.data_dir == Path("/srv/forge")
    assert settings.public_base_url == "https://img.example.com"
    assert settings.reference_allowlist == ["127.0.0.1", "images.intranet", "10.0.0.0/8"]
    assert settings.worker_concurrency == 16


def test_toml_file_with_models_and_env_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "imageforge.toml").write_text(
        'data_dir = "/from/file"\n'
        "image_url_ttl_seconds = 600\n"
        'reference_allowlist = ["10.1.0.0/16"]\n'
        '[models."gpt-image-2-r"]\n'
        "max_references = 8\n"
        '[models."house-style"]\n'
        'max_resolution = "2k"\n'
    )
    monkeypatch.setenv("IMAGEFORGE_IMAGE_URL_TTL_SECONDS", "120")
    settings = Settings.load()
    assert settings.data_dir == Path("/from/file")
    assert settings.image_url_ttl_seconds == 120  # the environment wins over the file
    assert settings.reference_allowlist == ["10.1.0.0/16"]
    specs = settings.model_specs()
    assert specs["gpt-image-2-r"].max_references == 8
    assert specs["gpt-image-2-r"].uses_quality is False
    house = specs["house-style"]
    assert (house.max_resolution, house.max_references, house.uses_quality) == ("2k", 6, True)


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(tmp_path / "missing.toml")
    assert caught.value.setting == "--config" and "does not exist" in caught.value.message


def _load_error(tmp_path: Path, toml: str | None = None) -> ConfigurationError:
    config = None
    if toml is not None:
        config = tmp_path / "imageforge.toml"
        config.write_text(toml)
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(config)
    return caught.value


def test_a_bad_environment_value_names_its_variable_and_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGEFORGE_LEASE_SECONDS", "-1")
    error = _load_error(tmp_path)
    assert error.setting == "lease_seconds"
    assert error.message == "must be greater than 0 (got '-1')"
    assert error.fix == (
        "set IMAGEFORGE_LEASE_SECONDS to a valid value, or unset it for the default (30.0)"
    )


def test_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGEFORGE_RELAY_BASE_URL", "ftp://user:hunter2@relay")
    error = _load_error(tmp_path)
    assert error.setting == "relay_base_url" and "hunter2" not in str(error), error
    monkeypatch.delenv("IMAGEFORGE_RELAY_BASE_URL")
    monkeypatch.setenv("IMAGEFORGE_MAX_BODY_BYTES", "1")
    assert "(got '1')" in _load_error(tmp_path).message  # plain values are shown


@pytest.mark.parametrize(
    ("toml", "setting", "words"),
    [
        ('engnie = "relay"\n', "engnie", "did you mean engine?"),
        ('[models."house"]\nengnie = "relay"\n', 'models."house".engnie', "did you mean engine"),
        ('[models."house"]\nmax_references = -1\n', 'models."house".max_references', "0"),
        ('[upstreams.r]\nkind = "relay"\nbase_url = "ftp://x"\n', "upstreams.r.base_url", "http"),
        ("[upstreams.r]\nbase_url = 'https://x'\n", "upstreams.r.kind", "is required"),
        ("engine = \n", None, "is not valid TOML"),
    ],
)
def test_a_bad_file_names_the_key(
    tmp_path: Path, toml: str, setting: str | None, words: str
) -> None:
    error = _load_error(tmp_path, toml)
    assert error.setting == (setting or str(tmp_path / "imageforge.toml"))
    assert words in str(error)


def test_a_table_in_the_environment_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEFORGE_MODELS", "{bad")
    with pytest.raises(ConfigurationError) as caught:
        Settings.load()
    assert caught.value.setting == "models" and "JSON" in caught.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("public_base_url", "ftp://x"),
        ("image_url_ttl_seconds", 0),
        ("worker_concurrency", 0),
        ("poll_interval_seconds", 5),
        ("trusted_proxies", ["proxy.internal"]),
        ("unavailable_retry_after_seconds", 0),
        ("storage_write_threads", 0),
    ],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_heartbeat_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValidationError, match="heartbeat_seconds") as caught:
        Settings(lease_seconds=5, heartbeat_seconds=5)
    assert caught.value.errors()[0]["loc"] == ("heartbeat_seconds",)


def _priced(tmp_path: Path, toml: str) -> Settings:
    config = tmp_path / "prices.toml"
    config.write_text(toml)
    return Settings.load(config)


def test_a_custom_model_inherits_gpt_image_2s_prices(tmp_path: Path) -> None:
    settings = _priced(
        tmp_path,
        """
[models."house-style"]
max_resolution = "2k"

[models."free-preview"]
prices = {}

[models."gpt-image-2-r"]
max_references = 4
""",
    )
    book = settings.price_book()
    assert [book.price("house-style", q) for q in ("low", "medium", "high")] == [
        6_000,
        53_000,
        211_000,
    ]
    assert book.price("free-preview", "high") == 0
    # A built-in model configured without prices keeps its own.
    assert book.price("gpt-image-2-r", "1k") == 5_000


def test_a_custom_model_inherits_the_configured_gpt_image_2_prices(tmp_path: Path) -> None:
    settings = _priced(
        tmp_path,
        """
[models."gpt-image-2".prices]
low = "0.01"
medium = "0.02"
high = "0.03"

[models."house-style"]
engine = "offline"
""",
    )
    assert settings.price_book().price("house-style", "medium") == 20_000


def test_a_custom_model_billed_otherwise_must_price_itself(tmp_path: Path) -> None:
    settings = _priced(
        tmp_path,
        """
[models."by-size"]
billing = "resolution"
uses_quality = false
""",
    )
    with pytest.raises(ConfigurationError) as caught:
        settings.price_book()
    assert caught.value.setting == 'models."by-size".prices'
    assert "billed by resolution" in caught.value.message
    assert "1k" in (caught.value.fix or "") and "prices = {}" in (caught.value.fix or "")


def test_the_webhook_retry_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load().webhook_retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    monkeypatch.setenv("IMAGEFORGE_WEBHOOK_RETRY_SCHEDULE", "0.1, 0.2,30")
    assert Settings.load().webhook_retry_schedule == [0.1, 0.2, 30.0]
    monkeypatch.setenv("IMAGEFORGE_WEBHOOK_RETRY_SCHEDULE", "")
    assert len(Settings.load().webhook_retry_schedule) == 7
    for bad in ("soon", "0,5", "5,90000"):
        monkeypatch.setenv("IMAGEFORGE_WEBHOOK_RETRY_SCHEDULE", bad)
        with pytest.raises(ConfigurationError, match="IMAGEFORGE_WEBHOOK_RETRY_SCHEDULE"):
            Settings.load()
