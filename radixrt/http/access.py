"""Who an HTTP request comes from, and what follows from it: the API key that authorizes it (from
``Authorization: Bearer KEY``, or ``?key=KEY`` for the cache page opened in a browser), whether it
holds the admin key, and the names its key is known by to the router: its tenant (whose in-flight
limit and fair share its requests count against) and its cache namespace.

Both names come from the one key that authorized the request, so a request cannot be authorized by
one key and counted or cached as another. Keys are compared by their SHA-256 digests with
``hmac.compare_digest`` against every configured key, so the time taken says neither which key
matched nor how much of one did.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from radixrt.http.schemas import ApiError
from radixrt.wire.protocol import key_id


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _match(given: str | None, keys: dict[bytes, str]) -> str | None:
    """The key of ``keys`` (by digest) that ``given`` is, compared with every one of them."""
    if given is None:
        return None
    digest, found = _digest(given), None
    for candidate, key in keys.items():
        if hmac.compare_digest(digest, candidate):
            found = key
    return found


@dataclass
class Access:
    """The HTTP API's keys: ``api_keys`` (none: the API is open, one shared tenant), the
    ``admin_key`` (None: nobody sees every tenant's figures) and what separates tenants' caches."""

    api_keys: tuple[str, ...] = ()
    admin_key: str | None = None
    namespace_by: str = "key"  # "key", "user" or "none"
    _accepted: dict[bytes, str] = field(init=False, repr=False)
    _admin: dict[bytes, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.namespace_by not in ("key", "user", "none"):
            raise ValueError(f"namespace_by is 'key', 'user' or 'none', not {self.namespace_by!r}")
        keys = (*self.api_keys, self.admin_key) if self.admin_key is not None else self.api_keys
        self._accepted = {_digest(k): k for k in keys}
        self._admin = {_digest(self.admin_key): self.admin_key} if self.admin_key is not None else {}

    def authorize(self, request: Request) -> str | None:
        """The key that authorizes ``request`` (the header's if it is one, else ``?key=``'s); None
        when the API has no keys. A 401 when it has and the request shows none of them."""
        if not self.api_keys:
            return None
        for given in _presented(request):
            key = _match(given, self._accepted)
            if key is not None:
                return key
        raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key")

    def is_admin(self, request: Request) -> bool:
        """Whether ``request`` shows the admin key (never, when none is configured)."""
        return bool(self._admin) and any(_match(given, self._admin) is not None for given in _presented(request))

    def require_admin(self, request: Request, what: str) -> None:
        if not self.is_admin(request):
            raise ApiError(403, f"{what} needs the admin key", code="admin_key_required")

    def tenant(self, key: str | None) -> str | None:
        """The tenant of requests authorized by ``key``: None (the front end's own, shared) without keys."""
        return key_id(key) if key is not None else None

    def namespace(self, key: str | None, user: str | None) -> str | None:
        """The cache namespace of requests authorized by ``key`` that name ``user``."""
        if self.namespace_by == "user":
            return user
        if self.namespace_by == "key" and key is not None:
            return key_id(key)
        return None


def _presented(request: Request) -> list[str]:
    """The keys a request shows, the header's first."""
    header = request.headers.get("authorization", "")
    shown = [header[7:]] if header.startswith("Bearer ") else []
    if (query := request.query_params.get("key")) is not None:
        shown.append(query)
    return shown


def read_keys(path: str | Path) -> list[str]:
    """The keys in a key file: one a line; blank lines and ``#`` comments are not keys."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read the key file {path}: {e.strerror or e}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ValueError(f"the key file {path} holds no key (one a line; blank lines and # comments are skipped)")
    return keys


def configured_keys(
    api_keys: Sequence[str],
    api_key_files: Sequence[str | Path],
    admin_key: str | None,
    admin_key_file: str | Path | None,
    environ: Mapping[str, str],
) -> tuple[tuple[str, ...], str | None]:
    """The API keys and the admin key from every source ``serve`` takes them from: options (seen by
    anyone who runs ``ps``), key files, and ``RADIXRT_API_KEYS`` (comma-separated) and
    ``RADIXRT_ADMIN_KEY``. ``ValueError`` names a bad source."""
    api = [*api_keys, *(k for f in api_key_files for k in read_keys(f))]
    api += [k.strip() for k in environ.get("RADIXRT_API_KEYS", "").split(",") if k.strip()]
    admin = [k for k in (admin_key, environ.get("RADIXRT_ADMIN_KEY", "").strip()) if k]
    if admin_key_file is not None:
        admin += read_keys(admin_key_file)
    if len(admin) > 1:
        raise ValueError("give one admin key: --admin-key, --admin-key-file or RADIXRT_ADMIN_KEY")
    return tuple(dict.fromkeys(api)), admin[0] if admin else None
