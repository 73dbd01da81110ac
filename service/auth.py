"""Bearer-token checks: client keys for the API, one admin key for /admin."""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from ragtune.errors import Unauthorized


def matching_key(request: Request, keys: list[SecretStr]) -> str | None:
    """The key the request sent, if it is one of `keys`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    # Every key is compared (constant time each), so timing does not tell which one is close.
    matches = [hmac.compare_digest(token.encode(), key.get_secret_value().encode()) for key in keys]
    return token if any(matches) else None


def require_key(request: Request, keys: list[SecretStr], what: str) -> str:
    key = matching_key(request, keys)
    if key is None:
        raise Unauthorized(f"missing or wrong API key: send Authorization: Bearer <{what}>")
    return key
