"""Building a verified OCI image layout from the store: the library entry points."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from . import mediatypes as mt
from .cache import VerifyCache, remove_layout
from .digest import Digest, parse_digest
from .errors import IntegrityError, OCILayoutError, OutputError, UsageError
from .layout import LayoutWriter
from .manifest import Platform
from .place import Placement, place_blob, write_blob_bytes
from .platforms import parse_platform
from .resolve import Plan, PlannedBlob, Request, resolve
from .store import MetadataSource, SQLiteMetadata

log = logging.getLogger(__name__)

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"^{_REF_COMPONENT}(?:/{_REF_COMPONENT})*$")

ProgressFn = Callable[[str, int], None]

# Start of the warning that hardlinked blobs share writable store files.
WRITABLE_LINKS_WARNING = "hardlinked blob(s) are writable in the store"


@dataclass
class BuildResult:
    """What a build produced; ``target`` is the scanner source string."""

    output: Path
    repository: str
    requested_digest: str
    manifest_digest: str
    media_type: str
    platform: Platform | None
    ref_name: str
    chain: list[str]
    placements: list[Placement]
    shape: str = "scan"
    referrers: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def target(self) -> str:
        return f"oci-dir:{self.output}"

    @property
    def bytes_verified(self) -> int:
        return sum(p.size for p in self.placements if p.hashed)

    def to_json(self) -> dict:
        methods: dict[str, int] = {}
        for placement in self.placements:
            methods[placement.method] = methods.get(placement.method, 0) + 1
        return {
            "output": str(self.output),
            "target": self.target,
            "repository": self.repository,
            "requested_digest": self.requested_digest,
            "manifest_digest": self.manifest_digest,
            "media_type": self.media_type,
            "platform": self.platform.to_json() if self.platform else None,
            "ref_name": self.ref_name,
            "shape": self.shape,
            "resolution_chain": self.chain,
            "referrers": self.referrers,
            "blobs": [
                {
                    "digest": p.digest,
                    "size": p.size,
                    "method": p.method,
                    "hashed": p.hashed,
                }
                for p in self.placements
            ],
            "placement_methods": methods,
            "bytes_verified": self.bytes_verified,
            "skipped_non_distributable": self.skipped,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def build_layout(
    store: str | os.PathLike[str] | MetadataSource,
    output: str | os.PathLike[str],
    *,
    digest: str | Digest | None = None,
    image: str | None = None,
    tag: str | None = None,
    repo: str | None = None,
    platform: str | Platform | list | tuple | None = None,
    shape: str = "scan",
    referrers: bool = False,
    ref_name: str | None = None,
    link: str = "auto",
    workers: int | None = None,
    sync: bool = True,
    progress: ProgressFn | None = None,
    verify: str = "digest",
    cache: VerifyCache | None = None,
) -> BuildResult:
    """Build a verified OCI image layout at ``output``.

    ``store`` is an emulator store directory or any MetadataSource. The image
    is named by ``digest`` or by ``image`` and ``tag``. With ``shape="scan"``
    an index resolves to one platform child and ``index.json`` holds that one
    manifest; with ``shape="full"`` the layout holds the stored index and
    every child the store has (only the listed platforms when ``platform`` is
    given). ``referrers`` adds manifests whose subject is a placed manifest.
    ``verify="deep"`` also checks each layer's diff_id. ``cache`` lets a
    hardlink placement skip hashing a store file verified before.
    The layout appears at ``output`` only when complete, and the store is only
    read. Raises an OCILayoutError subclass whose ``exit_code`` tells the
    failure class.
    """
    started = time.monotonic()
    if verify not in ("digest", "deep"):
        raise UsageError(f"invalid verify mode {verify!r}: use digest or deep")
    request = Request(
        digest=_as_digest(digest),
        image=image,
        tag=tag,
        repo=repo,
        platforms=_as_platforms(platform),
        shape=shape,
        referrers=referrers,
    )
    source, owned = open_store_source(store)
    warnings: list[str] = []
    try:
        plan = resolve(source, request)
        ref = _choose_ref_name(ref_name, plan, warnings)
        _check_outside_store(output, store, plan)
        with LayoutWriter(output, sync=sync) as writer:
            placements, skipped = _place_all(
                source, plan, writer, link, workers, progress, cache
            )
            if cache is not None:
                cache.record_many(
                    (p.identity, p.digest) for p in placements if p.identity
                )
            for body_digest, body in plan.bodies.items():
                path = writer.blob_path(body_digest)
                # An artifact may carry a manifest body as a layer; the bytes
                # are the same because the digests are.
                if not os.path.lexists(path):
                    write_blob_bytes(body, path)
            if verify == "deep":
                from .deep import verify_manifests

                checks = verify_manifests(writer.temp, plan.bodies.values())
                warnings.extend(c.warning for c in checks if c.warning)
            writer.commit(_index_document(plan, ref), before_rename=_self_check)
    except OSError as exc:
        raise OutputError(
            f"cannot write the layout {output}: {exc.strerror or exc}",
            path=str(output),
        ) from exc
    finally:
        if owned:
            source.close()

    writable = [p.digest for p in placements if p.store_writable]
    if writable:
        warnings.append(
            f"{len(writable)} {WRITABLE_LINKS_WARNING}, so a consumer could "
            "change the store's copy; use --link copy to isolate"
        )
    for digest_text in skipped:
        warnings.append(
            f"non-distributable layer {digest_text} is not in the store and was "
            "left out; it is never fetched from its URLs, and scanners that read "
            "every layer (syft 1.18) fail on the missing file"
        )
    if any(digest.algorithm != "sha256" for digest in plan.bodies):
        warnings.append(
            "the layout uses sha512 digests, which syft 1.18 and skopeo 1.9 "
            "reject (\"unsupported hash\"); ocilayout check verifies them"
        )
    warnings.extend(plan.notes)
    if cache is not None and cache.problem:
        warnings.append(cache.problem)
    return BuildResult(
        output=writer.output,
        repository=plan.repository.key,
        requested_digest=str(plan.requested),
        manifest_digest=str(plan.top_digest),
        media_type=plan.top_media_type,
        platform=plan.platform,
        ref_name=ref,
        chain=[str(d) for d in plan.chain],
        placements=placements,
        shape=shape,
        referrers=[str(digest) for digest in plan.referrers],
        skipped=skipped,
        warnings=warnings,
        seconds=time.monotonic() - started,
    )


@contextmanager
def temporary_layout(
    store: str | os.PathLike[str] | MetadataSource,
    *,
    workspace: str | os.PathLike[str] | None = None,
    **options,
) -> Iterator[BuildResult]:
    """Build a layout in a private temporary directory and remove it on exit.

    The directory is created with mode 0700 under ``workspace`` (default: the
    system temporary directory), and its path contains no ``:`` or ``@``,
    which scanners would misread in an ``oci-dir:`` source. Keyword options
    are those of ``build_layout``, except ``output``.
    """
    parent = tempfile.mkdtemp(prefix="ocilayout-", dir=workspace)
    try:
        if any(ch in parent for ch in ":@"):
            raise UsageError(
                f"workspace path {parent} contains ':' or '@', which scanners "
                "misread in a source string; choose another workspace"
            )
        yield build_layout(store, os.path.join(parent, "layout"), **options)
    finally:
        remove_layout(os.path.join(parent, "layout"), options.get("cache"))
        shutil.rmtree(parent, ignore_errors=True)


# Set to 1 to validate every layout with ocilayout.check before it is
# renamed into place; the test suite sets it so that every build is checked.
SELF_CHECK_VARIABLE = "OCILAYOUT_SELF_CHECK"


def _self_check(temp: Path) -> None:
    if os.environ.get(SELF_CHECK_VARIABLE) != "1":
        return
    from .check import check_layout

    report = check_layout(temp)
    if not report.ok:
        problems = "; ".join(
            f"{p.code} at {p.file} {p.json_path}: {p.message}" for p in report.errors
        )
        raise IntegrityError(f"self-check of the built layout failed: {problems}")


def _check_outside_store(output, store, plan: Plan) -> None:
    """Reject an output inside the store directory or the repository's storage."""
    target = Path(os.path.realpath(os.path.dirname(os.path.abspath(output))))
    target = target / os.path.basename(os.path.abspath(output))
    roots = [plan.repository.storage_path]
    if isinstance(store, (str, os.PathLike)):
        roots.append(os.fspath(store))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if target == real_root or real_root in target.parents:
            raise OutputError(
                f"output {output} is inside the store at {real_root}; a build "
                "never writes into the store, so choose a path outside it",
                path=str(output),
            )


def _as_platforms(value) -> tuple[Platform, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, Platform)):
        value = [value]
    return tuple(
        parse_platform(item) if isinstance(item, str) else item for item in value
    )


def _as_digest(value: str | Digest | None) -> Digest | None:
    if value is None or isinstance(value, Digest):
        return value
    return parse_digest(value)


def open_store_source(store) -> tuple[MetadataSource, bool]:
    """Return (source, whether this build opened it and must close it).

    ``store`` is a store directory, an open MetadataSource, or a callable
    that opens one, so errors from opening a database surface inside the
    build like any other missing metadata.
    """
    if isinstance(store, (str, os.PathLike)):
        return SQLiteMetadata.for_store(store), True
    if callable(store) and not hasattr(store, "blob_refs"):
        return store(), True
    return store, False


def _choose_ref_name(explicit: str | None, plan: Plan, warnings: list[str]) -> str:
    if explicit is not None:
        if not _REF_NAME.fullmatch(explicit):
            raise UsageError(
                f"invalid ref name {explicit!r}: use letters and digits joined "
                "by one of - . _ : @ + (or --), with / between components"
            )
        return explicit
    tag = plan.tag or "latest"
    if _REF_NAME.fullmatch(tag):
        return tag
    replaced = re.sub(r"[^A-Za-z0-9]+", "-", tag).strip("-") or "latest"
    warnings.append(
        f"tag {tag!r} is not a valid OCI ref name, so the layout uses "
        f"{replaced!r}; pass --ref to choose another"
    )
    return replaced


def _index_document(plan: Plan, ref: str) -> dict:
    entries = [dict(entry) for entry in plan.entries]
    entries[0]["annotations"] = {REF_NAME_ANNOTATION: ref}
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": entries,
    }


class _Cancelled(Exception):
    pass


# Hashing offers its CPU slot after this many bytes to a blob with more bytes
# left, so that all slots finish close together.
SLICE_BYTES = 64 * 1024 * 1024
# Maximum placement threads. At most ``workers`` of them hash at any moment.
MAX_THREADS = 64


class _Slots:
    """CPU slots for hashing threads, granted to the most remaining bytes first.

    Every SLICE_BYTES, a thread hashing a large blob hands its slot to a
    waiting thread with more bytes left, if there is one, and queues again.
    Hashing cannot split one blob, but this keeps every slot busy until the
    end is less than a slice away: nine equal blobs on two CPUs take about
    the time of four and a half, not five.
    """

    def __init__(self, count: int, cancel: threading.Event):
        self._free = count
        self._cancel = cancel
        self._waiting: list[tuple[int, int, threading.Event]] = []
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def enter(self, remaining: int) -> None:
        """Take a slot, waiting behind threads with more bytes left."""
        with self._lock:
            if self._cancel.is_set():
                raise _Cancelled()
            if self._free and not self._waiting:
                self._free -= 1
                return
            granted = threading.Event()
            heapq.heappush(self._waiting, (-remaining, next(self._turn), granted))
        # Woken by leave, which hands its slot over, or by wake on cancel.
        # Waking only the chosen thread keeps the others off the GIL.
        granted.wait()
        if self._cancel.is_set():
            raise _Cancelled()

    def pause(self, remaining: int) -> None:
        """Hand the slot to a waiter with more bytes left, if any, and queue again.

        The slot is kept when no waiter has more than ``remaining`` bytes left.
        """
        with self._lock:
            if not self._waiting or -self._waiting[0][0] <= remaining:
                return
            granted = threading.Event()
            heapq.heappop(self._waiting)[2].set()
            heapq.heappush(self._waiting, (-remaining, next(self._turn), granted))
        granted.wait()
        if self._cancel.is_set():
            raise _Cancelled()

    def leave(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].set()
            else:
                self._free += 1

    def wake(self) -> None:
        """Release every waiting thread after ``cancel`` was set."""
        with self._lock:
            for _, _, granted in self._waiting:
                granted.set()
            self._waiting.clear()


def _place_all(
    source: MetadataSource,
    plan: Plan,
    writer: LayoutWriter,
    link: str,
    workers: int | None,
    progress: ProgressFn | None,
    cache: VerifyCache | None = None,
) -> tuple[list[Placement], list[str]]:
    """Verify and place every planned blob in parallel, sharing CPUs fairly."""
    unique: dict[Digest, PlannedBlob] = {}
    skipped = []
    for blob in plan.blobs:
        if blob.storage_key is None:
            skipped.append(str(blob.digest))
        else:
            unique.setdefault(blob.digest, blob)
    jobs = sorted(unique.values(), key=lambda b: b.descriptor.size, reverse=True)
    if progress is not None:
        progress("total-bytes", sum(b.descriptor.size for b in jobs))
        progress("total-blobs", len(jobs))

    cancel = threading.Event()
    slot_count = max(1, workers or os.cpu_count() or 1)
    slots = _Slots(slot_count, cancel)

    def run(blob: PlannedBlob) -> Placement:
        remaining = blob.descriptor.size
        since_turn = 0
        holding = False

        def tick(count: int) -> None:
            nonlocal remaining, since_turn, holding
            if cancel.is_set():
                raise _Cancelled()
            if progress is not None:
                progress("bytes", count)
            remaining = max(0, remaining - count)
            since_turn += count
            if since_turn >= SLICE_BYTES and remaining:
                since_turn = 0
                holding = False
                slots.pause(remaining)
                holding = True

        slots.enter(remaining)
        holding = True
        try:
            placement = _place_one(source, plan, blob, writer, link, tick, cache)
        finally:
            if holding:
                slots.leave()
        if progress is not None:
            progress("blob", 1)
        return placement

    # Only blobs larger than a slice ever yield a slot, so only they need a
    # thread beyond the slots. More threads would make every small blob wait
    # for a handover.
    large = sum(1 for blob in jobs if blob.descriptor.size > SLICE_BYTES)
    threads = max(1, min(len(jobs), slot_count + large, MAX_THREADS))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ocilayout")
    try:
        futures = [pool.submit(run, blob) for blob in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures], skipped
    finally:
        cancel.set()
        slots.wake()
        pool.shutdown(wait=True, cancel_futures=True)


def _place_one(
    source: MetadataSource,
    plan: Plan,
    blob: PlannedBlob,
    writer: LayoutWriter,
    link: str,
    tick: Callable[[int], None],
    cache: VerifyCache | None = None,
) -> Placement:
    repo = plan.repository
    try:
        fd, path = source.open_blob(repo, blob.storage_key)
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"{blob.kind} {blob.digest} has a row in repository {repo.key} but "
            f"its file {exc.filename or blob.storage_key} is missing from the "
            "blob store"
        ) from None
    try:
        return place_blob(
            fd,
            path,
            blob.digest,
            blob.descriptor.size,
            writer.blob_path(blob.digest),
            link,
            progress=tick,
            verified=None if cache is None else partial(cache.hit, digest=blob.digest),
        )
    except OCILayoutError:
        raise
    except OSError as exc:
        raise OCILayoutError(
            f"cannot place {blob.kind} {blob.digest} from {path}: {exc}"
        ) from exc
    finally:
        os.close(fd)
