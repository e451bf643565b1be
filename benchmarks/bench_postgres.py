"""PostgreSQL metadata with a million blob rows: resolution and whole builds.

A real PostgreSQL server (from the Debian package, started by the tests'
fixture) contains a small synthetic image among 1,000,000 filler rows in
``oci_blobs`` and ``manifest_blob_refs`` and 200,000 filler manifests with
their tags and artifacts rows. Two things are timed:

- resolution alone (tag, manifest body, blob rows, config) through one open
  source, which is what the database contributes to a build;
- a whole build through a new source each round: connecting, resolving,
  verifying and hardlinking three small blobs, writing the layout.

The server runs on the same machine over a unix socket, so network latency
to a remote database is not part of these numbers.
"""

from __future__ import annotations

import statistics
import time

import pytest
from conftest import record, record_value, remove
from synthetic import IMAGE_NAME, REPOSITORY_KEY, make_synthetic_image

from emulator import postgres as emulator_postgres
from ocilayout.build import build_layout
from ocilayout.postgres import PostgresMetadata
from ocilayout.resolve import Request, resolve
from ocilayout.store import SQLiteMetadata

# The PostgreSQL server fixtures of the test suite.
pytest_plugins = ("tests.pg_server",)

FILLER_BLOB_ROWS = 1_000_000
LAYER_SIZES = [4096, 8192, 16384]


@pytest.fixture(scope="module")
def big_postgres(bench_root, postgres_server):
    """Push the synthetic image into PostgreSQL among a million filler rows."""
    root = bench_root / "postgres"
    root.mkdir()
    image = make_synthetic_image(root, LAYER_SIZES, seed=7)
    database = postgres_server.create_database("bench")
    url = postgres_server.url(database)
    store = emulator_postgres.PostgresStore.init(root / "pg-store", url)
    emulator_postgres.push(
        store, REPOSITORY_KEY, IMAGE_NAME, image.tag, f"{image.layout}:{image.ref}"
    )
    emulator_postgres.add_synthetic_rows(url, FILLER_BLOB_ROWS)
    yield url, image
    postgres_server.drop_database(database)
    remove(root)


def resolve_once(source, tag: str) -> None:
    plan = resolve(source, Request(image=IMAGE_NAME, tag=tag))
    assert len(plan.blobs) == len(LAYER_SIZES) + 1


def test_postgres_resolution(benchmark, big_postgres):
    url, image = big_postgres
    source = PostgresMetadata(url)
    sqlite = SQLiteMetadata.for_store(image.store)
    try:
        sqlite_stats = benchmark_median(lambda: resolve_once(sqlite, image.tag))
        benchmark.pedantic(
            resolve_once, args=(source, image.tag), rounds=200, warmup_rounds=5
        )
    finally:
        source.close()
        sqlite.close()

    median = benchmark.stats.stats.median
    record(
        benchmark,
        "postgres",
        "resolve with 1,000,000 blob rows in PostgreSQL",
        note=f"SQLite store without filler rows: median {sqlite_stats * 1000:.3f} ms",
    )
    record_value(
        "postgres", "resolve median, PostgreSQL", round(median * 1000, 3), "ms"
    )
    record_value(
        "postgres", "resolve median, SQLite", round(sqlite_stats * 1000, 3), "ms"
    )


def test_postgres_build(benchmark, big_postgres, bench_root):
    url, image = big_postgres
    output = bench_root / "postgres-build" / "layout"
    output.parent.mkdir()

    def build() -> None:
        with PostgresMetadata(url) as source:
            build_layout(source, output, image=IMAGE_NAME, tag=image.tag, sync=False)

    benchmark.pedantic(build, setup=lambda: remove(output), rounds=30, warmup_rounds=2)
    remove(output.parent)

    record(
        benchmark,
        "postgres",
        "build with a new connection, 1,000,000 blob rows",
        note="three small blobs hardlinked; connection set-up included",
    )


def benchmark_median(action, rounds: int = 200) -> float:
    """Return the median seconds of ``rounds`` calls of ``action``."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
