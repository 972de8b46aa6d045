"""The lean outbound HTTP path for calls made at volume (rest-hook callbacks): aiohttp, one session
per process, keep-alive connections pooled per destination.

Why not the process's ``httpx.AsyncClient``: measured on the shared 2-core box, 64 concurrent PUTs
of a 1.5 kB body to a loopback receiver cost 1.7 to 2.6 ms of client CPU each with httpx 0.29 /
httpcore 1.0 (its pool re-checks every idle connection, through anyio, on each request), 0.15 to 0.17
ms with aiohttp 3.14: at 200 callbacks/s that is a third of a core. TLS is verified exactly as the
httpx client does (``httpx.create_ssl_context``: certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``),
``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` apply as with httpx (read by the standard library, not
by aiohttp's ``trust_env``, which also reads ``~/.netrc``), redirects are never followed, and every
call is recorded for the transaction log (``kit.exchanges``) as the httpx client's are.

Transport failures raise :class:`CallFailed` named as httpx names them (``ConnectError``,
``ReadTimeout`` …), so what an administrator reads in attempts and logs did not change.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import httpx
from yarl import URL

from cht_interop.kit import exchanges


class CallFailed(Exception):
    """No answer came (connection refused, timeout, TLS, a broken reply); ``str`` names the kind."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes  # at most the caller's ``max_body`` bytes
    retry_after: str | None = None  # the answer's ``Retry-After`` (a paced caller slows down by it)


class PooledHttp:
    """``await request(...)`` from any task of one event loop; ``aclose()`` at shutdown."""

    def __init__(self, *, timeout_seconds: float, max_connections: int = 100) -> None:
        self.timeout_seconds = timeout_seconds
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        self._proxies: dict[str, str] = {}

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (aiohttp binds it to the running loop)."""
        session = self._session
        if session is None or session.closed:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(verify=True, trust_env=True)
            found = urllib.request.getproxies()
            self._proxies = {k: v for k, v in found.items() if k in ("http", "https")}
            t = self.timeout_seconds
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t),
                cookie_jar=aiohttp.DummyCookieJar(),  # no receiver cookie rides on later callbacks
            )
            self._session = session
        return session

    async def request(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, *, max_body: int
    ) -> Reply:
        """Send ``headers`` exactly (repeated names kept, in order); read at most ``max_body``
        bytes of the reply."""
        exchange = exchanges.begin_outbound(method, url, headers, body)
        try:
            session = self._open()
            target = URL(url, encoded=True)
            async with session.request(
                method,
                target,
                headers=headers,
                data=body,
                allow_redirects=False,
                proxy=self._proxy_for(target),
            ) as response:
                reply = Reply(
                    response.status,
                    response.headers.get("Content-Type", ""),
                    await _read_at_most(response, max_body),
                    response.headers.get("Retry-After"),
                )
                if exchange is not None:
                    exchanges.answer(exchange, reply.status, _merged(response.headers.items()), reply.body)
                return reply
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError) as exc:
            raise CallFailed(_httpx_name(exc)) from exc

    def _proxy_for(self, url: URL) -> str | None:
        proxy = self._proxies.get(url.scheme)
        if proxy is None or urllib.request.proxy_bypass(url.host or ""):
            return None
        return proxy

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def _merged(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header pairs as httpx's ``dict(headers)`` gives them: names lower-cased, repeats joined."""
    out: dict[str, str] = {}
    for name, value in items:
        key = str(name).lower()
        out[key] = f"{out[key]}, {value}" if key in out else str(value)
    return out


def _httpx_name(exc: BaseException) -> str:
    """``<httpx's name for this failure>: <detail>``."""
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        kind = "ConnectTimeout" if "connect" in str(exc).lower() else "ReadTimeout"
    elif isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
        kind = "ConnectError" if isinstance(exc, aiohttp.ClientConnectorError) else "RemoteProtocolError"
    elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        kind = "RemoteProtocolError"
    elif isinstance(exc, aiohttp.InvalidURL | ValueError):
        kind = "InvalidURL"
    else:
        kind = "NetworkError"
    detail = str(exc).strip() or type(exc).__name__
    return f"{kind}: {detail}"
