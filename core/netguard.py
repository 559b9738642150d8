"""Fetching URLs given by users without reaching places they must not (SSRF).

Only http and https. Every address a host name resolves to must be public, unless an admin allow-listed the
host or its network (Django admin: "URL allow rules", or YMIR_URL_ALLOWLIST). The connection goes to the
address that was checked (no second DNS lookup to rebind), redirects are followed by hand and checked again,
and the body is cut at a size limit.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from django.conf import settings
from django.utils.translation import gettext as _

from core.errors import Invalid

MAX_REDIRECTS = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Invalid):
    code = "url_refused"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str


def _allow_rules() -> list[str]:
    from core.models import UrlAllowRule

    rules = list(settings.YMIR_URL_ALLOWLIST)
    rules += list(UrlAllowRule.objects.values_list("pattern", flat=True))
    return [r.strip().lower() for r in rules if r.strip()]


def _allowed(host: str, address: IPAddress, rules: list[str]) -> bool:
    for rule in rules:
        if rule == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(rule, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_url(url: str) -> Target:
    """Resolve and check a URL; answer where to connect, or raise UrlRefused with the reason."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(_("Only http and https URLs can be fetched."))
    host = parts.hostname
    if not host:
        raise UrlRefused(_("The URL has no host."))
    if parts.username or parts.password:
        raise UrlRefused(_("URLs with credentials are not accepted."))
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UrlRefused(_("The URL's port is not valid.")) from exc
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(_("The host %(host)s cannot be resolved.") % {"host": host}) from exc
    rules = _allow_rules()
    addresses = sorted({str(info[4][0]) for info in infos})
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if not address.is_global and not _allowed(host, address, rules):
            raise UrlRefused(
                _(
                    "%(host)s resolves to %(address)s, a loopback, link-local or private address. "
                    "An administrator can allow it."
                )
                % {"host": host, "address": address}
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, path, addresses[0])


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def fetch(url: str, *, max_bytes: int, timeout: float = 30.0) -> Iterator[bytes]:
    """The body of a checked URL, in chunks; raises UrlRefused (address, redirects, status, size)."""
    for _hop in range(MAX_REDIRECTS + 1):
        target = check_url(url)
        connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = connection_class(target, timeout)
        try:
            conn.request("GET", target.path, headers={"User-Agent": "ymir-platform", "Accept": "*/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise UrlRefused(_("A redirect without a location."))
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise UrlRefused(_("The server answered %(status)d.") % {"status": response.status})
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise UrlRefused(_("The file is larger than the limit of %(limit)d bytes.") % {"limit": max_bytes})
            received = 0
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > max_bytes:
                    raise UrlRefused(_("The file is larger than the limit of %(limit)d bytes.") % {"limit": max_bytes})
                yield chunk
            return
        except (OSError, http.client.HTTPException) as exc:
            raise UrlRefused(_("The download failed: %(why)s") % {"why": exc}) from exc
        finally:
            conn.close()
    raise UrlRefused(_("Too many redirects."))
