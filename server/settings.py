"""Server settings: flags, environment (MLFS_*) and an optional YAML file, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from slicer import data_home


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLFS_", extra="forbid")

    store: Path = Field(default_factory=lambda: data_home() / "store")
    host: str = "127.0.0.1"
    port: int = 8000
    operator_token: SecretStr | None = None  # without one, operator endpoints refuse every request
    cache_budget_mb: int = 4096
    build_wait_s: float = 30.0  # resolve waits this long for a build before answering 202
    max_pending_builds: int = 4  # builds queued or running; more are refused with 503
    max_body_bytes: int = 64 * 1024
    max_upload_mb: int = 256  # adapter stack uploads (PUT /v1/models/{name})
    profiles_file: Path | None = None
    # Latency telemetry (POST /v1/telemetry/latency) and estimates; see README "Latency estimates".
    device_token: SecretStr | None = None  # when set, telemetry reports need 'Authorization: Bearer <token>'
    telemetry_min_clients: int = Field(3, ge=1)  # distinct clients before device reports override the table
    telemetry_rate_per_minute: float = Field(30.0, gt=0)  # reports per client (address), bursts of 10
    telemetry_max_factor: float = Field(5.0, gt=1)  # a report beyond estimate x/÷ this factor is refused
    latency_calibration: bool = True  # calibrate at start when the store has no calibration for a profile

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides) -> Settings:
        """File values, overridden by the environment, overridden by explicit (flag) values."""
        file_values = {}
        if config_file is not None:
            file_values = yaml.safe_load(Path(config_file).read_text()) or {}
        env = cls()  # environment and defaults
        merged = {**file_values, **{k: v for k, v in env.model_dump().items() if k in env.model_fields_set}}
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**merged)
