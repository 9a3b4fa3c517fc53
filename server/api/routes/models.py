"""GET /v1/models: served models, their search spaces and palettes, with estimates per device profile."""

from __future__ import annotations

from fastapi import APIRouter, Query

from ...selection import memory_mb
from ..deps import Service, StrictRoute
from ..errors import responses
from ..schemas import ModelInfo, ModelsResponse, PaletteRow, Profile, ProfileEstimate, Shape

router = APIRouter(prefix="/v1", tags=["models"], route_class=StrictRoute)


@router.get("/models", response_model=ModelsResponse, responses=responses(422))
def models(svc: Service, seq_len: int = Query(128, ge=1, le=8192), batch_size: int = Query(1, ge=1, le=1024)):
    """Served models, their search spaces and palettes, with fp32 estimates per device profile at a shape."""
    out = []
    for name, m in svc.models.items():
        per_profile = {p: svc.latency_estimates(m, p, seq_len, batch_size) for p in svc.profiles}
        palette = []
        for cand in m.candidates:  # the quality selection ranks by: one meaning in every response
            cfg = cand.config
            count = cfg.param_count(m.dims)
            ests = {}
            mem = memory_mb(m.dims, cfg, "fp32", seq_len, batch_size)
            for p, latency in per_profile.items():
                est = latency.get((cfg.key, "fp32"))
                ests[p] = ProfileEstimate(memory_mb=round(mem, 1), fits_memory=mem <= svc.profiles[p].memory_mb,
                                          **(est.as_dict() if est else {"latency_ms": None}))
            palette.append(PaletteRow(key=cfg.key, config=cfg.to_dict(), shape=cfg.describe(), params=count.total,
                                      params_non_embedding=count.non_embedding, quality=cand.quality,
                                      quality_metric=m.quality_metric if cand.quality is not None else None,
                                      estimates=ests))
        out.append(ModelInfo(name=name, family=m.dims.family, description=m.served.description,
                             search_space=m.opened.supernet.space.to_dict(), palette=palette,
                             metric=(m.palette or {}).get("metric"), quality_metric=m.quality_metric,
                             estimates_at=Shape(seq_len=seq_len, batch_size=batch_size)))
    return ModelsResponse(models=out, profiles=[Profile(**vars(p)) for p in svc.profiles.values()])
