"""Emulator lookups: resolving an image stays flat as blob rows grow.

Two stores hold the same small image plus filler rows of other images:
10,000 and 1,000,000 rows in each of ``oci_blobs`` and
``manifest_blob_refs``. Resolution (tag, manifest body, blob rows, config)
runs in process, so only the queries and the parsing are timed.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import time

import pytest
from conftest import record, record_value, remove
from synthetic import IMAGE_NAME, REPOSITORY_KEY, make_synthetic_image

from ocilayout.resolve import Request, resolve
from ocilayout.store import SQLiteMetadata

# Allowed slowdown of one resolution from 10,000 to 1,000,000 rows per table.
FLAT_RATIO = 1.5
REFS_PER_MANIFEST = 10


def add_filler_rows(database, count: int, seed: int) -> None:
    """Insert ``count`` oci_blobs rows and as many manifest_blob_refs rows."""
    rng = random.Random(seed)
    db = sqlite3.connect(database)
    db.execute("PRAGMA synchronous = OFF")
    (repo_id,) = db.execute(
        "SELECT id FROM repositories WHERE key = ?", (REPOSITORY_KEY,)
    ).fetchone()
    now = "2024-01-01T00:00:00.000000+00:00"

    def digest() -> str:
        return f"sha256:{rng.getrandbits(256):064x}"

    blobs, refs = [], []
    manifest = digest()
    for number in range(count):
        blob = digest()
        if number % REFS_PER_MANIFEST == 0:
            manifest = digest()
        blobs.append((f"b{number}", repo_id, blob, 1024, f"oci-blobs/{blob}", now))
        refs.append((f"r{number}", repo_id, manifest, blob, "layer", now))
    with db:
        db.executemany(
            "INSERT INTO oci_blobs (id, repository_id, digest, size_bytes,"
            " storage_key, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            blobs,
        )
        db.executemany(
            "INSERT INTO manifest_blob_refs (id, repository_id, manifest_digest,"
            " blob_digest, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            refs,
        )
    db.execute("ANALYZE")
    db.close()


@pytest.fixture(scope="module")
def stores(bench_root):
    built = {}
    for rows in (10_000, 1_000_000):
        root = bench_root / f"rows-{rows}"
        root.mkdir()
        image = make_synthetic_image(root, [4096, 8192, 16384], seed=4)
        add_filler_rows(image.store / "metadata.sqlite3", rows, seed=rows)
        built[rows] = image
    yield built
    for image in built.values():
        remove(image.layout.parent)


def resolve_once(source, tag: str) -> None:
    plan = resolve(source, Request(image=IMAGE_NAME, tag=tag))
    assert len(plan.blobs) == 4


def median_seconds(source, tag: str, repeat: int = 200) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        resolve_once(source, tag)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def test_resolution_flat_with_rows(benchmark, stores):
    small = SQLiteMetadata.for_store(stores[10_000].store)
    large = SQLiteMetadata.for_store(stores[1_000_000].store)
    tag = stores[10_000].tag
    try:
        small_median = median_seconds(small, tag)
        benchmark.pedantic(
            resolve_once, args=(large, tag), rounds=200, iterations=1, warmup_rounds=5
        )
    finally:
        small.close()
        large.close()

    large_median = benchmark.stats.stats.median
    ratio = large_median / small_median
    record(
        benchmark,
        "lookups",
        "resolve with 1,000,000 blob rows",
        note=f"10,000 rows: median {small_median * 1000:.3f} ms",
    )
    record_value(
        "lookups", "resolve median, 10,000 rows", round(small_median * 1000, 3), "ms"
    )
    record_value(
        "lookups", "resolve median, 1,000,000 rows", round(large_median * 1000, 3), "ms"
    )
    record_value("lookups", "ratio 1,000,000 / 10,000 rows", round(ratio, 3), "")
    assert ratio <= FLAT_RATIO
