"""Who a client is and what it may do.

With CURVE keys, every message carries its sender's public key (ZeroMQ's ``User-Id``): a key from
the key directory's admin role makes an admin client, any other a tenant. A tenant's requests are
cached under a namespace derived from its key (a namespace it names is nested under that one), count
against its own in-flight limit, and it sees only its own namespace's prefixes; cache-wide calls
(flushing, every namespace's prefixes, the workers' names) are an admin's. An admin client, such as
the HTTP front end, names the namespace and the tenant of each request itself. Without keys there is
no identity to go by: every client is an admin, and the docs say who can connect.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from radixrt.server.bookkeeping import Job
from radixrt.wire.protocol import key_id


@dataclass(eq=False)
class Peer:
    """A greeted client: its role, its own tenant and namespace, and its requests by id."""

    admin: bool
    tenant: str
    namespace: str | None  # where its requests are cached when it may not choose (None: it chooses)
    jobs: dict[str, Job] = field(default_factory=dict)

    def namespace_for(self, asked: str | None) -> str | None:
        """The namespace a request that asks for ``asked`` is cached under."""
        if self.namespace is None:
            return asked
        return self.namespace if asked is None else f"{self.namespace}/{asked}"

    def tenant_for(self, asked: str | None) -> str:
        """The tenant a request that names ``asked`` counts against (only an admin names one)."""
        return asked if self.admin and asked is not None else self.tenant


def make_peer(identity: bytes, user_id: str | None, admins: set[bytes] | None, clients_choose: bool) -> Peer:
    """The peer behind ``identity``: ``user_id`` is its z85 public key (None without keys), and
    ``admins`` the z85 keys of the admin role (None without keys: everyone is an admin)."""
    if admins is None or not user_id:
        return Peer(True, f"client-{identity.hex()}", None)
    admin = user_id.encode() in admins
    own = key_id(user_id)
    return Peer(admin, own, None if admin or clients_choose else own)


class InFlight:
    """Requests in flight per tenant, against one limit each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter[str] = Counter()

    def full(self, tenant: str) -> bool:
        return self._counts[tenant] >= self.limit

    def add(self, tenant: str) -> None:
        self._counts[tenant] += 1

    def remove(self, tenant: str) -> None:
        self._counts[tenant] -= 1
        if self._counts[tenant] <= 0:
            del self._counts[tenant]
