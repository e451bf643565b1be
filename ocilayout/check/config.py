"""Image config checks: architecture, os and rootfs with its diff_ids."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Findings, digest_problem, short


@dataclass
class ImageConfig:
    """The fields of an image config that other checks compare against."""

    os: str | None
    architecture: str | None
    variant: str | None
    diff_ids: list[str | None] | None


def check_image_config(findings: Findings, body: dict, file: str) -> ImageConfig:
    """Check an OCI or Docker image config and return the fields it could read."""
    values = {}
    for name in ("architecture", "os"):
        values[name] = _required_string(findings, body, name, file)
    variant = body.get("variant") if isinstance(body.get("variant"), str) else None
    diff_ids = _check_rootfs(findings, body, file)
    return ImageConfig(values["os"], values["architecture"], variant, diff_ids)


def _check_rootfs(findings: Findings, body: dict, file: str) -> list[str | None] | None:
    if "rootfs" not in body:
        findings.error(
            file, "$", "field-missing", "image config has no rootfs; it is required"
        )
        return None
    rootfs = body["rootfs"]
    if not isinstance(rootfs, dict):
        findings.error(
            file,
            "$.rootfs",
            "field-invalid",
            f"rootfs is {short(rootfs)}, not an object",
        )
        return None
    if rootfs.get("type") != "layers":
        findings.error(
            file,
            "$.rootfs.type",
            "field-invalid",
            f"rootfs.type is {short(rootfs.get('type'))}; it must be 'layers'",
        )
    if "diff_ids" not in rootfs:
        findings.error(
            file,
            "$.rootfs",
            "field-missing",
            "rootfs has no diff_ids; it is required",
        )
        return None
    if not isinstance(rootfs["diff_ids"], list):
        findings.error(
            file,
            "$.rootfs.diff_ids",
            "field-invalid",
            f"rootfs.diff_ids is {short(rootfs['diff_ids'])}, not an array of digests",
        )
        return None

    diff_ids: list[str | None] = []
    for i, value in enumerate(rootfs["diff_ids"]):
        problem = digest_problem(value)
        if problem:
            findings.error(file, f"$.rootfs.diff_ids[{i}]", "digest-invalid", problem)
        diff_ids.append(None if problem else value)
    return diff_ids


def _required_string(findings: Findings, body: dict, key: str, file: str) -> str | None:
    if key not in body:
        findings.error(
            file,
            "$",
            "field-missing",
            f"{key!r} is missing; it is a required string",
        )
        return None
    value = body[key]
    if not isinstance(value, str):
        findings.error(
            file,
            f"$.{key}",
            "field-invalid",
            f"{key} is {short(value)}, not a string",
        )
        return None
    return value
