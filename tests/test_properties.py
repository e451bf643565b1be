"""Property-based tests of the parsers that read untrusted text.

Whatever the input, a parser returns a value or raises one of the project's
own errors (an OCILayoutError subclass), never another exception. Accepted
values are checked against the grammars they must follow, written out here
independently of the code under test.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ocilayout.build import _choose_ref_name
from ocilayout.digest import ALGORITHMS, Digest, parse_digest
from ocilayout.errors import InvalidContentError, OCILayoutError, UsageError
from ocilayout.manifest import (
    MAX_JSON_DEPTH,
    load_json,
    parse_descriptor,
    parse_index,
    parse_manifest,
    platform_from_config,
    sniff_media_type,
)
from ocilayout.mediatypes import is_valid_media_type
from ocilayout.platforms import matches, parse_platform

# No example database: the runs leave nothing in the repository.
settings.register_profile(
    "hostile",
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("hostile")

# The OCI image-spec grammar of a ref name annotation.
REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
REF_NAME = re.compile(rf"{REF_COMPONENT}(?:/{REF_COMPONENT})*")
HEX = "0123456789abcdef"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def valid_digests():
    return st.sampled_from(sorted(ALGORITHMS)).flatmap(
        lambda algorithm: st.text(
            alphabet=HEX, min_size=ALGORITHMS[algorithm], max_size=ALGORITHMS[algorithm]
        ).map(lambda hex_part: f"{algorithm}:{hex_part}")
    )


# Digests


@given(st.text())
@example("sha256:" + "a" * 64 + "\n")
@example("sha256:" + "A" * 64)
@example("sha256:../" + "a" * 61)
def test_parse_digest_accepts_only_the_grammar(value):
    try:
        digest = parse_digest(value)
    except UsageError as error:
        assert error.exit_code == 2
        return
    algorithm, _, encoded = value.partition(":")
    assert str(digest) == value
    assert digest.algorithm == algorithm
    assert len(encoded) == ALGORITHMS[algorithm]
    assert set(encoded) <= set(HEX)


@given(valid_digests())
def test_parse_digest_round_trips(value):
    digest = parse_digest(value)

    assert str(digest) == value
    assert parse_digest(str(digest)) == digest


@given(valid_digests(), st.data())
def test_parse_digest_rejects_any_changed_character(value, data):
    position = data.draw(st.integers(min_value=7, max_value=len(value) - 1))
    replacement = data.draw(
        st.characters().filter(lambda c: c not in HEX), label="replacement"
    )
    changed = value[:position] + replacement + value[position + 1 :]

    with pytest.raises(UsageError) as caught:
        parse_digest(changed)

    assert repr(changed)[:100] in str(caught.value)


@given(json_values.filter(lambda v: not isinstance(v, str)))
def test_parse_digest_rejects_non_strings(value):
    with pytest.raises(UsageError):
        parse_digest(value)


@given(st.binary(max_size=80))
def test_digest_of_bytes_parses(data):
    digest = Digest.of_bytes(data)

    assert parse_digest(str(digest)) == digest


# Platforms


@given(st.text(max_size=40), st.none() | st.text(max_size=20))
@example("linux/amd64", "10.0.17763")
@example("linux/arm64/v8/extra", None)
@example("linux//amd64", None)
@example("Linux/AMD64", None)
def test_parse_platform_accepts_only_the_grammar(value, os_version):
    # Line feeds are left to test_platform_line_feed_rejected, a known defect.
    assume("\n" not in value and "\n" not in (os_version or ""))
    try:
        platform = parse_platform(value, os_version)
    except UsageError as error:
        assert error.exit_code == 2
        return
    parts = value.split("/")
    assert 2 <= len(parts) <= 3
    assert all(re.fullmatch(r"[a-z0-9_.-]+", part) for part in parts)
    assert (platform.os, platform.architecture) == (parts[0], parts[1])
    assert platform.variant == (parts[2] if len(parts) == 3 else None)
    if os_version is not None:
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)*", os_version)


platform_parts = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=8
)


@given(st.lists(platform_parts, min_size=2, max_size=3))
def test_parsed_platform_matches_itself(parts):
    platform = parse_platform("/".join(parts))

    assert matches(platform, platform)


# Ref names


@given(st.text(max_size=60))
@example("v1.0")
@example("a--b")
@example("a---b")
@example("repo/name:tag")
@example("-leading")
def test_explicit_ref_name_follows_grammar(value):
    assume("\n" not in value)  # see test_ref_name_line_feed_rejected
    plan = SimpleNamespace(tag=None)
    warnings: list[str] = []

    try:
        chosen = _choose_ref_name(value, plan, warnings)
    except UsageError as error:
        assert not REF_NAME.fullmatch(value)
        assert repr(value) in str(error)
        return
    assert chosen == value
    assert REF_NAME.fullmatch(chosen)
    assert warnings == []


@given(st.none() | st.text(max_size=60))
@example("sha256:" + "a" * 64)
@example("../..")
@example("")
def test_ref_name_from_tag_always_valid(tag):
    assume("\n" not in (tag or ""))  # see test_ref_name_line_feed_rejected
    plan = SimpleNamespace(tag=tag)
    warnings: list[str] = []

    chosen = _choose_ref_name(None, plan, warnings)

    assert REF_NAME.fullmatch(chosen)
    if chosen == (tag or "latest"):
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert repr(chosen) in warnings[0]


LINE_FEED_DEFECT = (
    "the pattern ends in '$' and is applied with re.match, and '$' also "
    "matches before a final line feed, so a value ending in '\\n' passes"
)


@pytest.mark.parametrize(
    "value,os_version",
    [("linux/amd64\n", None), ("linux\n/amd64", None), ("linux/amd64", "10.0\n")],
)
def test_platform_line_feed_rejected(value, os_version):
    with pytest.raises(UsageError):
        parse_platform(value, os_version)


@pytest.mark.parametrize("source", ["explicit", "tag"])
def test_ref_name_line_feed_rejected(source):
    value = "latest\n"
    plan = SimpleNamespace(tag=value if source == "tag" else None)
    warnings: list[str] = []

    try:
        chosen = _choose_ref_name(
            value if source == "explicit" else None, plan, warnings
        )
    except UsageError:
        return
    assert REF_NAME.fullmatch(chosen), repr(chosen)


def test_media_type_line_feed_rejected():
    assert not is_valid_media_type("application/vnd.oci.image.layer.v1.tar\n")


@given(st.text(max_size=60))
def test_media_type_follows_rfc6838(value):
    assume("\n" not in value)  # see test_media_type_line_feed_rejected
    name = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"

    assert is_valid_media_type(value) == bool(re.fullmatch(f"{name}/{name}", value))


# Manifest parsing


@given(st.binary(max_size=300))
@example(b"\xef\xbb\xbf{}")
@example(b"\x00{\x00}")
@example(b"{" * 10_000)
@example(b'{"a":1,"a":2}')
@example(b'"\\' + b"[" * 100)
def test_load_json_bytes(data):
    try:
        value = load_json(data, "body")
    except InvalidContentError:
        return
    assert isinstance(value, dict)


@given(json_values)
def test_load_json_serialized_values(value):
    data = json.dumps(value).encode()

    try:
        parsed = load_json(data, "body")
    except InvalidContentError as error:
        assert not isinstance(value, dict) or "deeper" in str(error)
        return
    assert parsed == value


@given(st.integers(min_value=1, max_value=3 * MAX_JSON_DEPTH))
def test_load_json_depth_bound(depth):
    data = b'{"a":' + b"[" * depth + b"]" * depth + b"}"

    try:
        load_json(data, "body")
    except InvalidContentError as error:
        assert depth + 1 > MAX_JSON_DEPTH
        assert f"deeper than {MAX_JSON_DEPTH}" in str(error)
        return
    assert depth + 1 <= MAX_JSON_DEPTH


media_types = st.sampled_from(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
) | st.text(max_size=30)
descriptor_like = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": media_types | json_values,
        "digest": valid_digests() | st.text(max_size=80) | json_values,
        "size": st.integers(min_value=-5, max_value=2**64) | json_values,
        "platform": st.fixed_dictionaries(
            {},
            optional={
                "os": st.text(max_size=8) | json_values,
                "architecture": st.text(max_size=8) | json_values,
                "variant": json_values,
                "os.version": json_values,
                "os.features": json_values,
            },
        )
        | json_values,
        "annotations": st.dictionaries(st.text(max_size=8), st.text(max_size=8))
        | json_values,
        "artifactType": media_types | json_values,
        "urls": st.lists(st.text(max_size=10)) | json_values,
    },
)
manifest_like = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.just(2) | json_values,
        "mediaType": media_types | json_values,
        "config": descriptor_like | json_values,
        "layers": st.lists(descriptor_like, max_size=3) | json_values,
        "manifests": st.lists(descriptor_like, max_size=3) | json_values,
        "subject": descriptor_like | json_values,
        "artifactType": media_types | json_values,
    },
)


def parse_any(document: dict) -> object:
    """Parse a document as the builder does: sniff, then manifest or index."""
    media_type = sniff_media_type(document, "body")
    if "manifests" in document or media_type.endswith(
        ("index.v1+json", "list.v2+json")
    ):
        return parse_index(document, media_type, "body")
    return parse_manifest(document, media_type, "body")


@given(manifest_like)
def test_manifest_like_documents(document):
    try:
        parsed = parse_any(document)
    except OCILayoutError:
        return
    assert parsed is not None


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_arbitrary_documents(document):
    try:
        parse_any(document)
    except OCILayoutError:
        pass
    try:
        parse_manifest(document, "application/vnd.oci.image.manifest.v1+json", "m")
    except OCILayoutError:
        pass
    try:
        parse_index(document, "application/vnd.oci.image.index.v1+json", "i")
    except OCILayoutError:
        pass


@given(descriptor_like | json_values)
def test_parse_descriptor(value):
    try:
        descriptor = parse_descriptor(value, "d")
    except OCILayoutError:
        return
    assert type(descriptor.size) is int and descriptor.size >= 0
    assert parse_digest(str(descriptor.digest)) == descriptor.digest
    assert re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/"
        r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}",
        descriptor.media_type,
    )
    if descriptor.platform is not None:
        assert descriptor.platform.os and descriptor.platform.architecture


@given(
    st.dictionaries(st.text(max_size=12), json_values, max_size=6)
    | st.fixed_dictionaries(
        {},
        optional={
            "os": json_values,
            "architecture": json_values,
            "variant": json_values,
            "os.version": json_values,
            "os.features": json_values,
        },
    )
)
def test_platform_from_config_never_raises(config):
    platform = platform_from_config(config)

    if platform is not None:
        assert isinstance(platform.os, str) and platform.os
        assert isinstance(platform.architecture, str) and platform.architecture
