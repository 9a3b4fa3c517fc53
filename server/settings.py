"""Server settings: flags, environment (MLFS_*) and an optional YAML file, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from slicer import DEFAULT_BUILDER, DEFAULT_GRAPH_MODE, Builder, GraphMode, data_home


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
    scrub_interval_s: float = Field(3600.0, ge=0)  # re-hash every cached artifact this often (0: never)
    header_timeout_s: float = Field(10.0, gt=0)  # a connection's request headers must arrive within this
    keep_alive_s: int = Field(5, ge=1)  # idle keep-alive connections are closed after this
    max_connections: int = Field(512, ge=1)  # open connections and requests; more get 503
    # Replicas (README "Deployment"): a postgresql:// URL puts the metadata in PostgreSQL and coordinates builds
    # and eviction between every server on the same store; unset, the store's own SQLite file is used.
    database_url: SecretStr | None = None
    lease_s: float = Field(30.0, gt=0)  # a build claim lapses this long after its holder's last renewal
    claim_poll_s: float = Field(1.0, gt=0)  # how often a replica waiting for another's build checks its claim
    evict_grace_s: float = Field(300.0, ge=0)  # with PostgreSQL: an evicted entry's files outlive its last use by this
    # On SIGTERM: requests in progress are answered, then running builds get this long to finish and publish
    # before they are abandoned and their claims released (README "Rolling restart").
    shutdown_build_wait_s: float = Field(20.0, ge=0)
    db_connect_timeout_s: float = Field(5.0, gt=0)
    db_statement_timeout_s: float = Field(10.0, gt=0)
    graph_builder: Builder = DEFAULT_BUILDER  # direct (graph written from the weights) or torch (torch.onnx.export)
    graph_mode: GraphMode = DEFAULT_GRAPH_MODE  # direct builder: fused (onnxruntime contrib operators) or plain
    # Latency telemetry (POST /v1/telemetry/latency) and estimates; see README "Latency estimates".
    device_token: SecretStr | None = None  # when set, telemetry reports need 'Authorization: Bearer <token>'
    telemetry_min_clients: int = Field(3, ge=1)  # distinct clients before device reports override the table
    telemetry_rate_per_minute: float = Field(30.0, gt=0)  # reports per client (address), bursts of 10
    telemetry_max_factor: float = Field(5.0, gt=1)  # a report beyond estimate x/÷ this factor is refused
    latency_calibration: bool = True  # calibrate at start when the store has no calibration for a profile
    # Quality gate (README "Quality gate"): configs this far below the teacher are never selected.
    quality_max_perplexity_ratio: float = Field(2.0, gt=1)  # language models: perplexity <= this x the teacher's
    quality_min_accuracy_margin: float = Field(0.05, ge=0, le=1)  # classifiers: accuracy >= majority class + this

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
