"""Latency estimates per profile: fits around a prior, thread scaling, robust device aggregation, scoping,
bounds, rate limits and the estimate cache (no timing assertions: synthetic rows of known shape)."""

from __future__ import annotations

import math

import pytest

from server.latency_model import REL_SD, Coeffs, LatencyEstimator, Point, ThreadScaling, fit, gflops
from server.metadata import DEVICE_RECENT, SQLiteMetadata
from server.profiles import DeviceProfile
from server.telemetry import RateLimited, RateLimiter, ReportRejected, check_report
from slicer import SearchSpace

PROFILES = {p.name: p for p in (DeviceProfile("one", threads=1, memory_mb=512), DeviceProfile("two", threads=2, memory_mb=1024))}
# this machine's "truth": 1 thread computes at half the speed of 2; per-call and per-layer costs as in a calibration
TRUTH = {1: Coeffs(0.4, 40.0, 0.3), 2: Coeffs(0.5, 20.0, 0.4)}


@pytest.fixture
def model(minilm):
    dims = minilm
    configs = list(SearchSpace.from_dict({"layers": [3, 4, 5, 6], "heads": [6, 12], "ffn": [768, 1536], "hidden": [384]}).enumerate(dims))
    return dims, sorted(configs, key=lambda c: gflops(dims, c, 128, 1))


@pytest.fixture
def meta(tmp_path):
    return SQLiteMetadata(tmp_path / "meta.sqlite")


def truth(dims, cfg, threads, seq=128):
    return TRUTH[threads].predict(gflops(dims, cfg, seq, 1), len(cfg.layers))


def calibrate(meta, error=1.0):
    """A calibration with the truth's thread scaling, its level off by ``error`` (synthetic stacks are not artifacts)."""
    for t, c in TRUTH.items():
        meta.put_calibration(t, (c.a * error, c.b * error, c.c * error), {})


def bench(meta, dims, profile, configs, threads, seq=128):
    for cfg in configs:
        meta.put_latency(profile, cfg.key, "fp32", seq, 1, truth(dims, cfg, threads, seq), "bench", threads=threads)


def estimator(meta, min_clients=3):
    return LatencyEstimator(meta, PROFILES, min_clients)


def test_fit_uses_few_points_to_adjust_the_prior_and_many_to_replace_it():
    prior = Coeffs(1.0, 10.0, 1.0)
    true = Coeffs(0.5, 30.0, 0.2)
    pts = [Point(gf, layers, true.predict(gf, layers)) for gf, layers in [(0.3, 3), (0.6, 4), (0.9, 5), (1.2, 6), (0.45, 6)]]
    coeffs, kind, sd = fit([], prior)
    assert coeffs == prior and kind == "prior"
    coeffs, kind, sd = fit(pts[:1], prior)  # one point: the prior's shape at the point's level
    assert kind == "level" and coeffs.predict(0.3, 3) == pytest.approx(pts[0].ms) and sd == REL_SD["level"]
    coeffs, kind, _ = fit(pts[:3], prior)  # compute and fixed parts scaled separately
    assert kind == "fit" and all(coeffs.predict(p.gf, p.layers) == pytest.approx(p.ms, rel=0.1) for p in pts)
    coeffs, kind, sd = fit(pts, prior)  # enough points over two depths: free
    assert kind == "fit" and coeffs.b == pytest.approx(30.0) and coeffs.c == pytest.approx(0.2, abs=1e-6)
    assert sd == REL_SD["fit"]  # exact points: the floor, not zero


def test_thread_scaling_carries_a_fit_between_thread_counts():
    scaling = ThreadScaling({t: (c.a, c.b, c.c) for t, c in TRUTH.items()})
    carried = scaling.carry(TRUTH[2], 2, 1)
    assert carried.predict(1.0, 4) == pytest.approx(TRUTH[1].predict(1.0, 4))
    assert scaling.at(4).b == pytest.approx(TRUTH[2].b / 2)  # not calibrated: nearest, compute scaled by threads


def test_a_fresh_store_estimates_from_the_calibration_and_without_one_has_none(model, meta):
    dims, configs = model
    assert estimator(meta).estimates("m", dims, configs, "one", 128, 1) == {}
    calibrate(meta)
    est = estimator(meta).estimates("m", dims, configs, "one", 128, 1)
    assert len(est) == 2 * len(configs) and {e.source for e in est.values()} == {"calibration"}
    cfg = configs[0]
    assert est[(cfg.key, "fp32")].ms == pytest.approx(truth(dims, cfg, 1))
    assert est[(cfg.key, "int8")].ms < est[(cfg.key, "fp32")].ms < est[(cfg.key, "fp32")].upper_ms


def test_a_profile_benched_on_one_config_borrows_the_other_profiles_fit_through_thread_scaling(model, meta):
    dims, configs = model
    calibrate(meta, error=1.6)  # the calibration's level is 60 % off; its thread ratio is right
    bench(meta, dims, "two", [configs[0], configs[len(configs) // 2], configs[-1]], 2)
    bench(meta, dims, "one", [configs[3]], 1)
    two = estimator(meta).estimates("m", dims, configs, "two", 128, 1)
    one = estimator(meta).estimates("m", dims, configs, "one", 128, 1)
    for cfg in configs[1:-1]:
        if cfg == configs[len(configs) // 2] or cfg == configs[3]:
            continue
        assert two[(cfg.key, "fp32")].source == "fit" and two[(cfg.key, "fp32")].ms == pytest.approx(truth(dims, cfg, 2), rel=0.03)
        assert one[(cfg.key, "fp32")].source == "level" and one[(cfg.key, "fp32")].ms == pytest.approx(truth(dims, cfg, 1), rel=0.03)
    assert one[(configs[3].key, "fp32")].source == "measured"
    # without the one row, the 1-thread profile is carried over from "two" (not a copy of its numbers)
    meta2 = SQLiteMetadata(meta_path := meta._db.execute("PRAGMA database_list").fetchone()[2])  # same file
    assert meta_path
    meta2._execute("DELETE FROM latency WHERE profile = 'one'")
    carried = estimator(meta2).estimates("m", dims, configs, "one", 128, 1)
    assert carried[(configs[5].key, "fp32")].source == "transfer"
    assert carried[(configs[5].key, "fp32")].ms == pytest.approx(truth(dims, configs[5], 1), rel=0.05)
    assert carried[(configs[5].key, "fp32")].ms > 1.5 * two[(configs[5].key, "fp32")].ms


def test_device_reports_are_scoped_to_their_profile_and_need_several_clients(model, meta):
    dims, configs = model
    calibrate(meta)
    bench(meta, dims, "two", configs[::4], 2)
    est = estimator(meta)
    before_one = est.estimates("m", dims, configs, "one", 128, 1)
    before_two = est.estimates("m", dims, configs, "two", 128, 1)
    cfg = configs[1]
    # one client, however many reports: one vote, under the minimum
    for _ in range(5):
        meta.put_latency("two", cfg.key, "fp32", 128, 1, 3 * before_two[(cfg.key, "fp32")].ms, "device", client="a")
    assert est.estimates("m", dims, configs, "two", 128, 1) == before_two
    assert est.estimates("m", dims, configs, "one", 128, 1) == before_one
    # three clients agree: the median overrides that config on that profile only, and moves nothing else
    for client in ("b", "c"):
        meta.put_latency("two", cfg.key, "fp32", 128, 1, 1.1 * before_two[(cfg.key, "fp32")].ms, "device", client=client)
    after_two = est.estimates("m", dims, configs, "two", 128, 1)
    assert after_two[(cfg.key, "fp32")].source == "device"
    assert after_two[(cfg.key, "fp32")].ms == pytest.approx(1.1 * before_two[(cfg.key, "fp32")].ms)  # the 3x outlier is outvoted
    assert est.estimates("m", dims, configs, "one", 128, 1) == before_one


def test_device_rows_are_bounded_per_client_and_bench_rows_use_the_latest_runs(meta):
    for i in range(DEVICE_RECENT + 7):
        meta.put_latency("two", "k", "fp32", 128, 1, 10.0 + i, "device", client="a")
    assert meta._execute("SELECT COUNT(*) FROM latency")[0][0] == DEVICE_RECENT
    (row,) = meta.latency_table("two")
    assert row["clients"] == 1 and row["samples"] == DEVICE_RECENT
    for ms in (50.0, 50.0, 50.0, 50.0, 50.0, 5.0, 5.0, 5.0, 5.0, 5.0):  # a re-bench replaces an old table
        meta.put_latency("one", "k", "fp32", 128, 1, ms, "bench")
    assert meta.latency_table("one")[0]["ms"] == 5.0


def test_estimates_are_cached_until_rows_or_calibration_change_from_any_connection(model, meta, tmp_path):
    dims, configs = model
    calibrate(meta)
    est = estimator(meta)
    first = est.estimates("m", dims, configs, "two", 128, 1)
    assert est.estimates("m", dims, configs, "two", 128, 1) is first
    assert est.estimates("m", dims, configs, "two", 64, 1) is not first  # another shape, another entry
    meta.put_latency("two", configs[0].key, "fp32", 128, 1, 1.0, "bench")
    second = est.estimates("m", dims, configs, "two", 128, 1)
    assert second is not first and second[(configs[0].key, "fp32")].source == "measured"
    meta.put_calibration(2, (1.0, 1.0, 1.0), {})
    third = est.estimates("m", dims, configs, "two", 128, 1)
    assert third is not second
    other = SQLiteMetadata(tmp_path / "meta.sqlite")  # e.g. `mlfs bench latency` beside the server
    other.put_latency("two", configs[1].key, "fp32", 128, 1, 1.0, "bench")
    assert est.estimates("m", dims, configs, "two", 128, 1)[(configs[1].key, "fp32")].source == "measured"


def test_reports_out_of_bounds_or_scope_are_refused():
    from server.latency_model import LatencyEstimate

    est = LatencyEstimate(10.0, 0.1, "fit")
    check_report(12.0, 2, 2, est, 5.0)
    check_report(12.0, None, 2, est, 5.0)
    for ms in (math.nan, math.inf, -1.0, 0.0, 51.0, 1.9):
        with pytest.raises(ReportRejected):
            check_report(ms, 2, 2, est, 5.0)
    with pytest.raises(ReportRejected, match="another profile"):
        check_report(12.0, 1, 2, est, 5.0)
    check_report(51.0, 2, 2, LatencyEstimate(10.0, 0.5, "calibration"), 5.0)  # nothing measured: no reference
    with pytest.raises(ReportRejected):
        check_report(math.nan, 2, 2, LatencyEstimate(10.0, 0.5, "calibration"), 5.0)


def test_rate_limiter_allows_a_burst_then_refills():
    limiter = RateLimiter(per_minute=6, burst=3)
    for _ in range(3):
        limiter.take("a", now=0.0)
    with pytest.raises(RateLimited) as err:
        limiter.take("a", now=0.0)
    assert err.value.retry_after == pytest.approx(10.0)
    limiter.take("b", now=0.0)  # per client
    limiter.take("a", now=10.0)  # one token back after 10 s
    with pytest.raises(RateLimited):
        limiter.take("a", now=10.0)


def test_sdk_sessions_set_spinning_deliberately(tmp_path):
    import onnx

    from client_sdk.latency import ALLOW_SPINNING, measure_interleaved, session_options
    from server.calibration import stack_graph

    assert session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == ("1" if ALLOW_SPINNING else "0")
    assert session_options(2, allow_spinning=True).get_session_config_entry("session.inter_op.allow_spinning") == "1"
    onnx.save(stack_graph(1, 1, 16), tmp_path / "a.onnx")
    results = measure_interleaved([tmp_path / "a.onnx"] * 2, threads=1, seq_len=8, rounds=3, runs=7, warmup=1)
    assert [r.runs for r in results] == [7, 7] and all(r.allow_spinning == ALLOW_SPINNING for r in results)
