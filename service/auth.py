"""Bearer-token checks: client keys for the API, one admin key for /admin."""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from ragtune.errors import Unauthorized


def has_key(request: Request, keys: list[SecretStr]) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # Every key is compared (constant time each), so timing does not tell which one is close.
    matches = [hmac.compare_digest(token.encode(), key.get_secret_value().encode()) for key in keys]
    return any(matches)


def require_key(request: Request, keys: list[SecretStr], what: str) -> None:
    if not has_key(request, keys):
        raise Unauthorized(f"missing or wrong API key: send Authorization: Bearer <{what}>")
