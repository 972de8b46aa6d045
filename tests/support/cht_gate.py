"""The CHT double behind a proxy that loses or refuses ``_bulk_docs`` requests (bulk-write tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.cht_double import ChtDouble


@dataclass
class Gate:
    """The double behind a proxy that can lose ``_bulk_docs`` answers (the CHT stored the docs,
    the caller gets a 504) or refuse the next requests with 429 and ``Retry-After``."""

    double: ChtDouble = field(default_factory=ChtDouble)
    lose_answers: int = 0
    refuse: int = 0
    lost: int = 0

    def app(self) -> ASGIApp:
        inner = self.double.app

        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            bulk = scope["type"] == "http" and scope["path"] == "/medic/_bulk_docs"
            if bulk and self.refuse:
                self.refuse -= 1
                await PlainTextResponse("slow down", 429, headers={"Retry-After": "1"})(scope, receive, send)
                return
            if bulk and self.lose_answers:
                self.lose_answers -= 1
                self.lost += 1

                async def swallow(_message: Message) -> None:
                    return None

                await inner(scope, receive, swallow)  # stored; the answer never reaches the caller
                await JSONResponse({"error": "gateway timeout"}, 504)(scope, receive, send)
                return
            await inner(scope, receive, send)

        return gate

    def bulk_requests(self) -> list[list[str]]:
        """The ids each ``_bulk_docs`` request carried, in order."""
        return [
            [doc["_id"] for doc in orjson.loads(r.body)["docs"]]
            for r in self.double.requests
            if r.path == "/medic/_bulk_docs"
        ]
