"""Schema version 4 (issue 18): failed builds, measured config quality and resolutions, on SQLite and PostgreSQL
alike; a database at version 3 (the previous release) is migrated in place, keeping its rows."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from server.metadata import MIGRATIONS, SCHEMA_VERSION, FailedBuild, PostgresMetadata, SQLiteMetadata

KEY = "a" * 64


def _at_version_3(execute, dialect: str) -> None:
    """The previous release's schema, built from its migrations, with an artifact and a latency row in it."""
    execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for step in MIGRATIONS[:3]:
        for sql, dialects in step:
            if dialect in dialects:
                execute(sql)
    execute("INSERT INTO schema_version VALUES (3)")
    execute(f"INSERT INTO artifacts VALUES ('{KEY}', 7, '{{}}', '{{}}', 0, 3, 1.0, 2.0, 0.5, NULL)")
    execute("INSERT INTO latency (profile, config_key, precision, seq_len, batch, ms, source, measured, threads) "
            "VALUES ('p', 'cfg', 'fp32', 128, 1, 5.0, 'bench', 1.0, 2)")


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated(request, tmp_path):
    """A metadata store opened on a version-3 database of each kind."""
    if request.param == "sqlite":
        db = sqlite3.connect(tmp_path / "meta.sqlite", isolation_level=None)
        _at_version_3(db.execute, "sqlite")
        db.close()
        return lambda: SQLiteMetadata(tmp_path / "meta.sqlite")
    url = request.getfixturevalue("pg_url")
    with psycopg.connect(url, autocommit=True) as conn:
        _at_version_3(conn.execute, "postgresql")
    return lambda: PostgresMetadata(url)


def test_version_3_is_migrated_to_4_keeping_its_rows_and_the_new_tables_work(migrated):
    assert SCHEMA_VERSION == 4
    meta = migrated()
    assert meta.schema_version() == 4
    assert meta.get_artifact(KEY).hits == 3 and meta.latency_table("p")[0]["ms"] == 5.0

    failure = FailedBuild("lin", "cfg", "int8", "m", KEY, "int8_gate", "rejected", {"argmax_agreement": 0.53})
    meta.put_failed_build(failure)
    meta.put_failed_build(FailedBuild("lin", "cfg", "fp32", "m", "b" * 64, "parity", "off", {"allowed": {"x": 1e-4}}))
    meta.put_failed_build(FailedBuild("other", "cfg", "int8", "n", "c" * 64, "error", "boom", {}))
    got = meta.failed_build(KEY)
    assert (got.kind, got.details, got.failed > 0) == ("int8_gate", {"argmax_agreement": 0.53}, True)
    assert {(f.config_key, f.precision) for f in meta.failed_builds("lin")} == {("cfg", "int8"), ("cfg", "fp32")}
    assert meta.clear_failed_builds("m", precision="fp32") == 1
    assert [f.precision for f in meta.failed_builds("lin")] == ["int8"]

    meta.put_quality("scope", "cfg", "perplexity", 26.5, {"examples": 16})
    meta.put_quality("scope", "cfg", "perplexity", 27.0, {"examples": 16})  # a re-measurement replaces
    assert meta.qualities("scope")["cfg"]["value"] == 27.0 and meta.qualities("elsewhere") == {}

    meta.put_resolution("r1", '{"request": {}}', KEY)
    assert meta.resolution("r1") == ('{"request": {}}', KEY) and meta.resolution("r2") is None

    again = migrated()  # opening again (a restart, another replica) changes nothing and sees it all
    assert again.schema_version() == 4 and again.failed_build(KEY).reason == "rejected"
