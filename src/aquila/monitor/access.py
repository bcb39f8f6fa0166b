"""Who may talk to the dashboard: the Host it is asked as, the token, the Origin of a change.

* **Host**: the name the browser used must be one this server answers to (the bound address,
  ``localhost``/``127.0.0.1``/``[::1]`` with the server's port, an IP literal when bound to all
  interfaces, or a name given with ``--allow-host``). A foreign page that re-points its own DNS
  name at this machine (DNS rebinding) still sends its own name, and is refused.
* **Token**: a random secret made at start and printed in the URL. The page load that carries it
  sets it as an ``HttpOnly; SameSite=Strict`` cookie (named per port: cookies ignore ports), so
  the page's scripts, styles and API calls carry it without scripts ever seeing it. Tools send
  the ``X-Aquila-Token`` header or ``?token=``.
* **Origin**: a request that changes state must come from this same origin. The cookie alone is
  not enough (that is what a cross-site form post would carry); without an ``Origin`` header
  the token must come in the header, which a foreign page cannot set without a CORS preflight
  that this server never grants.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
TOKEN_HEADER = "X-Aquila-Token"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def valid_name(name: str) -> bool:
    """A DNS name or an IP literal (no scheme, port, path or brackets)."""
    if _HOSTNAME.match(name.lower()):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header -> (lower-case name, port or None); None if it is not a valid Host."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[1:end], value[end + 1 :]
        if end < 0 or ":" not in name:
            return None
    elif value.count(":") <= 1:
        name, _, port = value.partition(":")
        rest = f":{port}" if ":" in value else ""
    else:
        return None
    port: int | None = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not digits.isdigit() or len(digits) > 5:
            return None
        port = int(digits)
        if port > 65535:
            return None
    if not valid_name(name):
        return None
    return name, port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Access:
    token: str
    port: int
    bound: str = "127.0.0.1"
    allowed: frozenset[str] = frozenset()  # --allow-host names: any port (reverse proxies)

    @property
    def cookie_name(self) -> str:
        return f"aquila_token_{self.port}"

    def host_ok(self, name: str, port: int | None) -> bool:
        if name in self.allowed:
            return True
        if (port if port is not None else 80) != self.port:
            return False
        if name in LOOPBACK_NAMES or name == self.bound.lower():
            return True
        # Bound to every interface: any address of this machine is fine, and an IP literal
        # cannot be rebound (the attack needs a DNS name of the attacker's).
        return self.bound in WILDCARDS and _is_ip(name)

    def token_ok(self, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode())

    def cookie_token(self, cookie_header: str | None) -> str | None:
        for part in (cookie_header or "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == self.cookie_name:
                return value.strip().strip('"')
        return None

    def set_cookie(self) -> str:
        return f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"

    @staticmethod
    def same_origin(origin: str, host: str) -> bool:
        """``Origin`` names the scheme + Host this request was sent to (http, or https behind a
        TLS proxy)."""
        origin, host = origin.strip().lower(), host.strip().lower()
        return origin in (f"http://{host}", f"https://{host}")
