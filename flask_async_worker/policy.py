"""gunicorn's request header policy, applied to every protocol alike.

Who may claim the request was HTTPS (``secure_scheme_headers``), who may set
``SCRIPT_NAME``/``PATH_INFO`` through a header (``forwarder_headers``), and
what becomes of header names with an underscore (``header_map``): these
decide how the application sees a request, and getting them wrong lets a
client spoof its scheme or mount point.  The rules follow gunicorn's
documented behaviour so that moving a deployment to this worker changes
none of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

from .protocols.errors import ProtocolError
from .protocols.events import Headers

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(addresses: Iterable[str]) -> tuple[bool, list[IPNetwork]]:
    allow_all = False
    networks: list[IPNetwork] = []
    for addr in addresses:
        addr = addr.strip()
        if addr == "*":
            allow_all = True
        elif addr:
            networks.append(ipaddress.ip_network(addr, strict=False))
    return allow_all, networks


class AddressList:
    """A parsed ``forwarded_allow_ips``/``proxy_allow_ips`` value."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.allow_all, self.networks = _networks(addresses)

    def __contains__(self, ip: str | None) -> bool:
        if self.allow_all:
            return True
        if ip is None:
            # A UNIX socket peer has no address; gunicorn trusts it.
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


class HeaderPolicy:
    """Decides, per request, the scheme and which headers the app sees."""

    def __init__(self, cfg: Any) -> None:
        self.forwarded_allow = AddressList(cfg.forwarded_allow_ips)
        self.scheme_headers: dict[bytes, bytes] = {
            k.lower().encode("latin-1"): v.encode("latin-1")
            for k, v in (cfg.secure_scheme_headers or {}).items()
        }
        self.forwarder_headers = frozenset(
            h.strip().lower().encode("latin-1") for h in cfg.forwarder_headers if h.strip()
        )
        self.header_map = str(cfg.header_map)

    def is_trusted(self, peer_ip: str | None) -> bool:
        return peer_ip in self.forwarded_allow

    def apply(self, headers: Headers, trusted: bool, scheme: str) -> tuple[Headers, str]:
        """Return the headers the app may see and the request's scheme.

        The header list is returned unchanged (not copied) in the common
        case: no underscore names and no scheme header present.
        """
        scheme_headers = self.scheme_headers if trusted else None
        forwarders = self.forwarder_headers if trusted else frozenset()
        claimed: str | None = None
        drop = False
        for name, value in headers:
            if b"_" in name:
                if name in forwarders or b"*" in forwarders:
                    continue
                if self.header_map == "dangerous":
                    continue
                if self.header_map == "drop":
                    drop = True
                    continue
                raise ProtocolError(f"header name with underscore: {name!r}")
            if scheme_headers and name in scheme_headers:
                this = "https" if value == scheme_headers[name] else "http"
                if claimed is not None and claimed != this:
                    raise ProtocolError("contradictory scheme headers")
                claimed = this
        if drop:
            headers = [
                (n, v)
                for n, v in headers
                if b"_" not in n or n in forwarders or b"*" in forwarders
            ]
        return headers, (claimed or scheme)

    def forwarded_script_name(self, headers: Headers, trusted: bool) -> str | None:
        """A ``SCRIPT_NAME`` header from a trusted forwarder, if allowed."""
        if not trusted or not (
            b"script_name" in self.forwarder_headers or b"*" in self.forwarder_headers
        ):
            return None
        for name, value in headers:
            if name == b"script_name":
                return value.decode("latin-1")
        return None
