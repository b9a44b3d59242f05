"""The public base URL of a DICOMweb service: what RetrieveURL and BulkDataURI start with.

Pure. In order of precedence:
1. A configured public base URL (`cloud.public_base_url`): behind any ingress, the admin knows.
2. `Forwarded` (RFC 7239), else `X-Forwarded-Proto` / `X-Forwarded-Host` / `X-Forwarded-Port`,
   **only when the peer is a configured trusted proxy** (a client could send them too). With a
   chain of proxies the element added by the first trusted proxy counts: walking the chain from
   the right, each hop whose sender is also trusted lets us believe the one before it.
3. The request's own scheme and Host; a Host without a port gets the port the request came
   in on (unless it is the scheme's default), so a client that omits it is not sent to port 80.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.errors import BadRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """CIDR strings (a bare address is a /32 or /128) -> networks; ValueError on a bad one."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def check_base_url(url: str) -> str | None:
    """Why a configured public base URL is unusable, or None (empty means not configured)."""
    if not url:
        return None
    m = re.match(r"^(https?)://([^/?#\s]+)(/[^?#\s]*)?$", url)
    if not m or not _HOST_RE.match(m.group(2)):
        return f'must be empty or a URL like "https://pacs.example.org[/prefix]", got {url!r}'
    return None


@dataclass(frozen=True)
class RequestOrigin:
    """What a handler knows about how a request reached us."""

    scheme: str  # of the connection to us: http or https
    host: str | None  # the Host header
    local_port: int | None  # the port the connection came in on
    local_host: str  # our address on that connection, when there is no Host
    peer: str | None  # the immediate peer's IP address
    headers: Mapping[str, str]


def public_base(
    origin: RequestOrigin, trusted: Sequence[Network] = (), configured: str = ""
) -> str:
    """`scheme://host[:port][/prefix]` without a trailing slash; BadRequest for a Host header
    that is not a host (it would end up in every URL of the response)."""
    if configured:
        return configured.rstrip("/")
    scheme, host, forwarded = origin.scheme, origin.host, False
    if _trusted(origin.peer, trusted):
        got = _from_forwarded(origin.headers, trusted) or _from_x_forwarded(origin.headers, trusted)
        if got is not None:  # the proxy speaks for the client: never add our own port
            fproto, fhost = got
            forwarded = True
            if fproto in DEFAULT_PORTS:
                scheme = fproto
            if fhost:
                host = fhost
    if not host:
        host = _bracket(origin.local_host)
        if origin.local_port is not None:
            host = f"{host}:{origin.local_port}"
    if not _HOST_RE.match(host):
        raise BadRequest("the Host header is not a host name")
    direct = not forwarded and origin.host and origin.local_port is not None
    if direct and not _has_port(host) and origin.local_port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{origin.local_port}"
    return f"{scheme}://{host}"


def _bracket(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def _has_port(host: str) -> bool:
    return bool(re.search(r":\d+$", host)) and not host.endswith("]")


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):  # "[2001:db8::1]:4711"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.split(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated "_id": never trusted


def _trusted(addr: str | None, trusted: Sequence[Network]) -> bool:
    ip = _ip(addr)
    if ip is None or not trusted:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in trusted)


def _header(headers: Mapping[str, str], name: str) -> str:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return ""


def _from_forwarded(
    headers: Mapping[str, str], trusted: Sequence[Network]
) -> tuple[str, str] | None:
    value = _header(headers, "forwarded")
    if not value:
        return None
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            k, eq, v = pair.partition("=")
            if eq:
                pairs[k.strip().lower()] = v.strip().strip('"')
        elements.append(pairs)
    i = len(elements) - 1
    while i > 0 and _trusted(elements[i].get("for"), trusted):
        i -= 1
    chosen = elements[i]
    return chosen.get("proto", "").lower(), chosen.get("host", "")


def _from_x_forwarded(
    headers: Mapping[str, str], trusted: Sequence[Network]
) -> tuple[str, str] | None:
    protos = _list(_header(headers, "x-forwarded-proto"))
    hosts = _list(_header(headers, "x-forwarded-host"))
    ports = _list(_header(headers, "x-forwarded-port"))
    if not (protos or hosts):
        return None
    hops = _list(_header(headers, "x-forwarded-for"))
    n = 0  # how many proxies before our peer are trusted too
    for addr in reversed(hops[1:]):
        if not _trusted(addr, trusted):
            break
        n += 1

    def pick(values: list[str]) -> str:
        return values[max(len(values) - 1 - n, 0)] if values else ""

    proto, host, port = pick(protos).lower(), pick(hosts), pick(ports)
    if host and port.isdigit() and not _has_port(host):
        scheme = proto or "http"
        if int(port) != DEFAULT_PORTS.get(scheme):
            host = f"{host}:{port}"
    return proto, host


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]
