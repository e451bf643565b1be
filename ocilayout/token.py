"""Short-lived registry bearer tokens for the scan pipeline's registry fallback.

A token is a JSON Web Token in the shape of the Docker registry token
specification: it names one repository and grants ``pull`` on it only, so a
scanner holding it can read that image and nothing else. It is signed with
ES256 (an EC P-256 key) or RS256 (an RSA key) and lives for minutes.

The signing key comes from a PEM file or from an environment variable. The
``cryptography`` package is imported only when a key is loaded, so importing
ocilayout needs nothing beyond the standard library.

A token value is a secret: ``RegistryToken`` hides it from ``repr``, and
callers pass it to a scanner only through environment variables.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OCILayoutError, UsageError
from .names import is_image_name

# Environment variables that supply the signing key, checked in this order.
KEY_FILE_ENV = "OCILAYOUT_TOKEN_KEY_FILE"
KEY_PEM_ENV = "OCILAYOUT_TOKEN_KEY"

DEFAULT_ISSUER = "ocilayout"
DEFAULT_TTL_SECONDS = 600
# Tolerated clock difference between the token minter and the registry.
CLOCK_SKEW_SECONDS = 30


class TokenError(OCILayoutError):
    """A registry token cannot be minted, or a presented token is not valid."""


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded for signing, with the JWS algorithm it implies."""

    algorithm: str
    key: Any = field(repr=False)
    key_id: str | None = None
    source: str = ""


@dataclass(frozen=True)
class RegistryToken:
    """A minted token; ``value`` is the secret and never appears in ``repr``."""

    value: str = field(repr=False)
    scope: str
    repository: str
    issuer: str
    audience: str
    expires_at: int

    def describe(self) -> dict:
        """Return the token's public facts, safe to log or print."""
        return {
            "scope": self.scope,
            "issuer": self.issuer,
            "audience": self.audience,
            "expires_at": self.expires_at,
        }


def pull_scope(repository: str) -> str:
    """Return the registry scope that grants pull on ``repository`` only."""
    return f"repository:{repository}:pull"


def load_signing_key(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SigningKey:
    """Load the PEM private key from ``path``, or from the environment.

    Without ``path``, ``OCILAYOUT_TOKEN_KEY_FILE`` names a key file and
    ``OCILAYOUT_TOKEN_KEY`` contains the PEM text itself. Raises TokenError when
    no key is configured or the key is not an unencrypted EC P-256 or RSA key.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(KEY_FILE_ENV):
        path = environ[KEY_FILE_ENV]
    if path is not None:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise TokenError(
                f"cannot read the token signing key {path}: {exc.strerror}"
            ) from None
        return _parse_private_key(pem, f"key file {path}")
    if environ.get(KEY_PEM_ENV):
        return _parse_private_key(environ[KEY_PEM_ENV].encode(), f"${KEY_PEM_ENV}")
    raise TokenError(
        "no token signing key: pass --token-key FILE or set "
        f"{KEY_FILE_ENV} or {KEY_PEM_ENV}"
    )


def mint_token(
    key: SigningKey,
    repository: str,
    *,
    audience: str,
    issuer: str = DEFAULT_ISSUER,
    subject: str = "ocilayout-scan",
    ttl: int = DEFAULT_TTL_SECONDS,
    now: float | None = None,
) -> RegistryToken:
    """Sign a token granting pull on ``repository`` for ``ttl`` seconds."""
    if not is_image_name(repository):
        raise UsageError(
            f"invalid repository name for a token: {repository!r}; expected "
            "lowercase components such as docker-local/library/alpine"
        )
    if ttl <= 0:
        raise UsageError(f"invalid token lifetime {ttl}: expected seconds > 0")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "nbf": issued - CLOCK_SKEW_SECONDS,
        "exp": issued + ttl,
        "jti": secrets.token_hex(16),
        "access": [{"type": "repository", "name": repository, "actions": ["pull"]}],
    }
    header = {"alg": key.algorithm, "typ": "JWT"}
    if key.key_id:
        header["kid"] = key.key_id
    signing_input = f"{_b64_json(header)}.{_b64_json(claims)}"
    signature = _sign(key, signing_input.encode("ascii"))
    return RegistryToken(
        value=f"{signing_input}.{_b64(signature)}",
        scope=pull_scope(repository),
        repository=repository,
        issuer=issuer,
        audience=audience,
        expires_at=claims["exp"],
    )


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """Load a PEM public key (or the public half of a PEM private key)."""
    from cryptography.hazmat.primitives import serialization

    data = Path(path).read_bytes()
    try:
        return serialization.load_pem_public_key(data)
    except ValueError:
        return _parse_private_key(data, f"key file {path}").key.public_key()


def verify_token(
    token: str,
    public_key: Any,
    *,
    audience: str,
    repository: str | None = None,
    action: str = "pull",
    issuer: str | None = None,
    now: float | None = None,
) -> dict:
    """Verify a token's signature, lifetime, audience and scope; return its claims.

    The algorithm must be the one ``public_key`` implies (ES256 for EC, RS256
    for RSA); ``none`` and every other algorithm are rejected. With
    ``repository`` given, the token must grant ``action`` on exactly that
    repository. Raises TokenError naming the first check that failed, without
    quoting the token.
    """
    header, claims, signing_input, signature = _split(token)
    expected = _algorithm_for(public_key)
    if header.get("alg") != expected:
        raise TokenError(
            f"token algorithm {header.get('alg')!r} is not the expected {expected}"
        )
    _verify_signature(public_key, expected, signing_input, signature)
    _check_claims(claims, audience, issuer, time.time() if now is None else now)
    if repository is not None and not grants(claims, repository, action):
        raise TokenError(f"token does not grant {action} on repository {repository}")
    return claims


def grants(claims: Mapping[str, Any], repository: str, action: str) -> bool:
    """Tell whether verified ``claims`` grant ``action`` on ``repository``."""
    for entry in claims.get("access") or []:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") != "repository" or entry.get("name") != repository:
            continue
        if action in (entry.get("actions") or []):
            return True
    return False


# Signing and verification internals


def _parse_private_key(pem: bytes, where: str) -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TokenError(
            f"invalid token signing key in {where}: expected an unencrypted "
            f"PEM private key ({exc})"
        ) from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise TokenError(
                f"unsupported EC curve {key.curve.name} in {where}: ES256 needs P-256"
            )
        return SigningKey("ES256", key, _key_id(key), where)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise TokenError(
                f"RSA key in {where} has {key.key_size} bits; use at least 2048"
            )
        return SigningKey("RS256", key, _key_id(key), where)
    raise TokenError(
        f"unsupported key type {type(key).__name__} in {where}: use EC P-256 or RSA"
    )


def _key_id(private_key: Any) -> str:
    """Derive a key id from the public key: the first 16 hex digits of its hash."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _sign(key: SigningKey, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import (
        decode_dss_signature,
    )

    if key.algorithm == "RS256":
        return key.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    # JWS carries an ECDSA signature as the raw 32-byte r and s, not DER.
    r, s = decode_dss_signature(key.key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _verify_signature(
    public_key: Any, algorithm: str, data: bytes, signature: bytes
) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import (
        encode_dss_signature,
    )

    try:
        if algorithm == "RS256":
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return
        if len(signature) != 64:
            raise InvalidSignature()
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise TokenError("token signature is not valid for the trusted key") from None


def _algorithm_for(public_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    raise TokenError(f"unsupported public key type {type(public_key).__name__}")


def _check_claims(claims: dict, audience: str, issuer: str | None, now: float) -> None:
    for name in ("exp", "nbf"):
        if not isinstance(claims.get(name), int):
            raise TokenError(f"token claim {name!r} is missing or not an integer")
    if now > claims["exp"] + CLOCK_SKEW_SECONDS:
        raise TokenError(f"token expired at {claims['exp']} (now {int(now)})")
    if now < claims["nbf"] - CLOCK_SKEW_SECONDS:
        raise TokenError(f"token is not valid before {claims['nbf']}")
    audiences = claims.get("aud")
    if isinstance(audiences, str):
        audiences = [audiences]
    if audience not in (audiences or []):
        raise TokenError(f"token audience {claims.get('aud')!r} is not {audience!r}")
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenError(f"token issuer {claims.get('iss')!r} is not {issuer!r}")


def _split(token: str) -> tuple[dict, dict, bytes, bytes]:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token: expected three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error):
        raise TokenError("malformed token: a part is not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("malformed token: header and claims must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: dict) -> str:
    return _b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("non-ASCII base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
