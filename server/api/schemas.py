"""Request and response bodies. Requests are strict: unknown fields and non-finite numbers are refused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["fp32", "int8", "auto"]
QualityMetric = Literal["accuracy", "neg_loss"]
QUALITY_DOC = ("higher is better: the palette's dev accuracy (`accuracy`), or the negative mean token "
               "cross-entropy (`neg_loss`) for language models; without a palette table the figure the quality gate "
               "measured, null until measured")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ----- requests -----------------------------------------------------------------------------------------------
class DeviceInfo(Strict):
    memory_available_mb: float | None = Field(None, gt=0)
    cpu_count: int | None = Field(None, ge=1)
    profile: str | None = Field(None, max_length=64)
    speed_score: float | None = Field(None, gt=0)


class BudgetIn(Strict):
    max_memory_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)
    seq_len: int = Field(128, ge=1, le=8192)
    batch_size: int = Field(1, ge=1, le=1024)
    precision: Precision = "auto"


class ResolveRequest(Strict):
    model: str = Field(..., max_length=128)
    device: DeviceInfo = DeviceInfo()
    budget: BudgetIn = BudgetIn()


class LatencyReport(Strict):
    artifact_id: str = Field(..., min_length=64, max_length=64, json_schema_extra={"pattern": "^[0-9a-f]{64}$"})
    profile: str = Field(..., max_length=64)
    latency_ms: float = Field(..., gt=0, lt=1e7)
    seq_len: int = Field(128, ge=1, le=8192)
    batch_size: int = Field(1, ge=1, le=1024)
    threads: int | None = Field(None, ge=1, le=1024, description="intra-op threads the device measured with; "
                                "a report from another thread count than the profile's is refused")


class WarmRequest(Strict):
    model: str = Field(..., max_length=128)
    configs: list[dict[str, Any]] = Field([], max_length=64)
    budgets: list[ResolveRequest] = Field([], max_length=64)


# ----- responses ----------------------------------------------------------------------------------------------
class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    # a failed build (type build_failed.<kind>): which artifact, and the figures behind the failure
    artifact_id: str | None = None
    config_key: str | None = None
    precision: str | None = None
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every error the server answers: ``detail`` says what was wrong in one readable line; ``errors`` lists the
    fields a request failed validation on (empty for other errors)."""

    detail: str
    errors: list[ErrorItem] = []


class LatencyFields(BaseModel):
    """A latency estimate on the device (see README "Latency estimates"); all null without any estimate."""

    latency_ms: float | None = Field(description="central estimate")
    latency_ms_upper: float | None = Field(None, description="conservative (90 % upper) estimate: latency budgets are checked against it")
    latency_rel_sd: float | None = Field(None, description="relative standard deviation")
    latency_source: Literal["measured", "device", "fit", "level", "transfer", "calibration"] | None = Field(
        None, description="where it comes from; `calibration`: the store's built-in calibration, nothing measured yet")


class Estimates(LatencyFields):
    memory_mb: float
    quality: float | None = Field(description=QUALITY_DOC)
    quality_metric: QualityMetric | None = None


class ResolveResponse(BaseModel):
    artifact_id: str
    config: dict[str, Any]
    precision: str
    url: str
    manifest_url: str
    sha256: str
    size_bytes: int
    estimates: Estimates


class Building(BaseModel):
    """202: the artifact is being built. Wait on ``resolve_url`` (GET, after Retry-After seconds): it stays the
    same for this request while the build runs, and answers 200 with the artifact once it is ready, or 422 with
    the reason and its figures if that build failed (an int8 build refused by its quality gate, a graph that
    failed parity); POST /v1/resolve again then gets the next best config. The id outlives restarts."""

    artifact_id: str
    status: Literal["building"]
    config: dict[str, Any]
    precision: str = Field(description="the precision being built (fp32 or int8; 'auto' resolved)")
    resolve_url: str = Field(description="GET this to wait: 202 while building, 200 with the artifact when ready")
    retry_after_s: int


class ProfileEstimate(LatencyFields):
    memory_mb: float
    fits_memory: bool


class QualityCheck(BaseModel):
    """A config's figure beside the teacher's (README "Quality gate"): excluded configs are never selected."""

    metric: Literal["perplexity", "accuracy"]
    value: float
    reference: float = Field(description="the teacher's perplexity, or the accuracy of always answering the "
                                         "majority class")
    limit: float = Field(description="the worst value still delivered")
    excluded: bool
    source: str = Field(description="'palette table' or 'measured on ...' (the model's validation or calibration text)")
    reason: str


class PaletteRow(BaseModel):
    key: str
    config: dict[str, Any]
    shape: str
    params: int
    params_non_embedding: int
    quality: float | None = Field(description=QUALITY_DOC)
    quality_metric: QualityMetric | None
    estimates: dict[str, ProfileEstimate]
    quality_check: QualityCheck | None = Field(None, description="null until measured (before its first serve) or "
                                                                 "for a model the gate does not apply to")
    excluded: bool = Field(False, description="true: too far below the teacher (quality_check.reason) or every "
                                              "precision's build failed (failed_builds)")


class QualityGateInfo(BaseModel):
    applies: bool
    rule: str = Field(description="the rule, or why the gate does not apply to this model")
    judged: int = Field(description="configs with a known figure (palette table or measured)")
    excluded: int


class FailedBuildInfo(BaseModel):
    artifact_id: str
    config_key: str
    shape: str
    precision: str
    kind: str = Field(description="int8_gate, parity or error")
    reason: str
    details: dict[str, Any] = Field(description="the figures: gate agreement and threshold, parity error and allowed")
    failed_at: float = Field(description="unix time")


class Int8Offer(BaseModel):
    offered: bool
    reason: str


class Shape(BaseModel):
    seq_len: int
    batch_size: int


class PaletteCheck(BaseModel):
    """Whether the palette's numbers were checked against the model's validation data."""

    verified: bool | None = Field(description="true: the palette's data fingerprint matches the validation data; "
                                              "false: not checked or other data (see reason); null: no palette")
    reason: str
    data: dict[str, Any] | None = Field(None, description="the data set the palette's numbers come from: name, "
                                                          "split, fingerprint, examples")


class ModelInfo(BaseModel):
    name: str
    family: str
    description: str
    search_space: dict[str, Any]
    palette: list[PaletteRow]
    metric: str | None = Field(description="the palette table's own metric (accuracy or loss)")
    quality_metric: QualityMetric | None
    palette_check: PaletteCheck
    has_validation_data: bool = Field(description="int8 builds are judged on real dev data (else calibration text)")
    estimates_at: Shape
    quality_gate: QualityGateInfo
    failed_builds: list[FailedBuildInfo] = Field(description="remembered failures of the current adapters, recipe "
                                                             "and validation data; never retried until cleared")
    int8: Int8Offer


class Profile(BaseModel):
    name: str
    threads: int
    memory_mb: int
    speed_score: float


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    profiles: list[Profile]


class CachedArtifact(BaseModel):
    artifact_id: str
    size_bytes: int
    pinned: bool
    hits: int
    build_seconds: float
    info: dict[str, Any]


class CacheListing(BaseModel):
    budget_bytes: int
    total_bytes: int
    artifacts: list[CachedArtifact]


class Warmed(BaseModel):
    artifact_id: str
    config: dict[str, Any]
    precision: str


class WarmResponse(BaseModel):
    warmed: list[Warmed]


class Registered(BaseModel):
    name: str
    base: str
    description: str
    configs: int
    adapters_fingerprint: str | None
    replaced: bool
    palette_check: PaletteCheck
    has_validation_data: bool


class Cleared(BaseModel):
    cleared: int = Field(description="failed builds forgotten")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    models: list[str]
    database: Literal["sqlite", "postgresql"] = Field(description="where the metadata lives; it answered this check")


class NotReadyBody(ErrorBody):
    """503 from /readyz: ``progress`` has the phase, seconds since start, and the models loaded so far."""

    progress: dict[str, Any]
