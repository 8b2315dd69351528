"""Bearer key -> Principal. Keys are compared as sha256 digests; the key itself is never stored.

Config keys are checked in memory. Keys created at runtime (CLI, admin API) live in the store; a lookup
result is cached for a few seconds so that the hot path does not pay a store round trip per request,
which bounds how long a revoked key keeps working (``cache_seconds``).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from .errors import AuthenticationError
from .settings import Settings
from .store.base import Store
from .values import value


@value
class Principal:
    team: str
    key_name: str
    digest: str


# OpenAI's wording (conventions.md 1.1), which clients match on; then where quotagate keys come from.
_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an api-key or x-api-key header. Your quotagate admin "
    "issues the keys (quotagate keys create)."
)


def _masked(key: str) -> str:
    return f"{key[:3]}***{key[-3:]}" if len(key) > 8 else "***"


def key_from_headers(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's key from raw ASGI headers: ``Authorization: Bearer``, Azure-style ``api-key`` or
    Anthropic-style ``x-api-key``."""
    auth = api_key = None
    for k, v in headers:
        if k == b"authorization":
            auth = v.decode("latin-1")
        elif k == b"api-key" or k == b"x-api-key":
            api_key = v.decode("latin-1")
    return bearer(auth, api_key)


def bearer(authorization: str | None, api_key_header: str | None) -> str:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key_header:  # Azure-style clients send `api-key`, Anthropic's `x-api-key`
        return api_key_header.strip()
    raise AuthenticationError(_MISSING)


class KeyRing:
    def __init__(self, settings: Settings, store: Store, *, cache_seconds: float = 5.0) -> None:
        self._static = {k.digest: Principal(k.team, k.display_name, k.digest) for k in settings.keys}
        self._teams = set(settings.teams)
        self._store = store
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, key: str) -> Principal:
        digest = hashlib.sha256(key.encode()).hexdigest()
        principal = self._static.get(digest)
        if principal is None:
            principal = await self._lookup(digest)
        # The dict lookup above is by digest; compare once more in constant time so a match never
        # depends on a timing-dependent string comparison of secret material.
        if principal is None or not hmac.compare_digest(principal.digest, digest):
            raise AuthenticationError(
                f"Incorrect API key provided: {_masked(key)}. This is a quotagate gateway: use a key issued by "
                "your quotagate admin (quotagate keys create), not a provider's key.",
                code="invalid_api_key",
            )
        return principal

    async def _lookup(self, digest: str) -> Principal | None:
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self._store.find_key(digest)
        principal = None
        if record is not None and not record.revoked and record.team in self._teams:
            principal = Principal(record.team, record.name, digest)
        if len(self._cache) > 10_000:  # bounded: wrong keys must not grow memory
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, principal)
        return principal

    def forget(self, digest: str) -> None:
        self._cache.pop(digest, None)
