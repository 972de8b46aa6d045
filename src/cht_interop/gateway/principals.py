"""Who a request is: the authenticated client and its roles (the contract other components read)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a client may do. ``interop`` (the reference's single role) means requester + cht."""

    REQUESTER = "requester"  # register endpoint/organization, submit and cancel follow-ups, read FHIR
    CHT = "cht"  # the CHT's outbound push: patients and encounters
    ADMIN = "admin"  # the console and everything
    INTEROP = "interop"


@dataclass(frozen=True)
class Principal:
    """An authenticated client: set on ``request.state.principal`` by the gateway."""

    client_id: str
    name: str
    roles: frozenset[Role]

    def has(self, role: Role) -> bool:
        if Role.ADMIN in self.roles or role in self.roles:
            return True
        return role in (Role.REQUESTER, Role.CHT) and Role.INTEROP in self.roles
