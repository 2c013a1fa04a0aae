"""Who is asking, and whether a change request really comes from our own page.

* **Basic auth** (`--auth USER:PASS`, better `$QDEPLOY_DASHBOARD_AUTH`): compared in constant
  time, user and password together.
* **A reverse proxy that authenticates** (`--trusted-header X-Forwarded-User`): the header
  names the user, and is believed only from the addresses of `--trusted-proxy` (127.0.0.1 and
  ::1 by default). The same header from anywhere else is refused (403), not ignored: a
  misconfigured proxy shows at once. The name must be `[A-Za-z0-9._@+-]{1,128}` exactly
  (anchored: CVE-2022-30034 was Flower matching an unanchored pattern), and only one header.
  Without `--trusted-header` no such header is ever read: sending one changes nothing.
* **CSRF**: a change is a POST with header `X-CSRF-Token`, an HMAC of the user under a secret
  made at start (so a token is worth nothing to another user, or after a restart), a JSON body,
  and an `Origin` (or `Sec-Fetch-Site`) that is this host when the browser sends one. The page
  reads its token from `/api/session`, which another site cannot read (no CORS).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

USER = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")
RESERVED_HEADERS = {"authorization", "cookie", "host", "content-length", "content-type", "transfer-encoding",
                    "connection", "origin", "referer", "x-csrf-token", "sec-fetch-site"}
DEFAULT_PROXIES = ("127.0.0.1", "::1")


class Refused(Exception):
    """A request we will not serve: the status and one line for the client."""

    def __init__(self, status: int, reason: str, challenge: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.challenge = status, reason, challenge


@dataclass
class Auth:
    basic: bytes | None = None  # b"user:password"
    trusted_header: str | None = None
    proxies: list = field(default_factory=lambda: [ipaddress.ip_network(p) for p in DEFAULT_PROXIES])
    secret: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def required(self) -> bool:
        return self.basic is not None or self.trusted_header is not None

    def user(self, headers, peer: str) -> str | None:
        """The authenticated user (None: no auth configured, anyone may read). Raises Refused."""
        if self.trusted_header:
            values = headers.get_all(self.trusted_header) or []
            if values:
                if not self.trusted(peer):
                    raise Refused(403, f"{self.trusted_header} is only accepted from a trusted proxy")
                if len(values) != 1 or not USER.fullmatch(values[0]):
                    raise Refused(400, f"bad {self.trusted_header} header")
                return values[0]
        if self.basic is not None:
            given = _basic(headers.get("Authorization", ""))
            if given is not None and hmac.compare_digest(given, self.basic):
                return given.partition(b":")[0].decode("utf-8", "replace")
            raise Refused(401, "authentication required", challenge=True)
        if self.trusted_header:
            raise Refused(401, "authentication required (through the proxy)")
        return None

    def trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        return any(address in network for network in self.proxies)

    # -- CSRF --------------------------------------------------------------------------------
    def token(self, user: str | None) -> str:
        mac = hmac.new(self.secret, f"csrf\0{user or ''}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_change(self, headers, user: str | None, host: str) -> None:
        """A POST that changes something: refused unless it comes from our page."""
        given = headers.get("X-CSRF-Token", "")
        if not given or not hmac.compare_digest(given.encode(), self.token(user).encode()):
            raise Refused(403, "missing or wrong CSRF token (reload the page)")
        if (headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            raise Refused(415, "expected Content-Type: application/json")
        origin = headers.get("Origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
            raise Refused(403, "cross-origin request refused")
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Refused(403, "cross-site request refused")


def _basic(header: str) -> bytes | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return None


def parse_basic(value: str) -> bytes:
    """--auth USER:PASS -> the bytes basic auth compares; ValueError with one line."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth: expected USER:PASS (both non-empty)")
    if not USER.fullmatch(user):
        raise ValueError("--auth: the user name may hold letters, digits and . _ @ + - (at most 128)")
    if len(password) > 1024 or not password.isprintable():
        raise ValueError("--auth: the password must be printable text of at most 1024 characters")
    return value.encode()


def parse_header(value: str) -> str:
    """--trusted-header NAME -> NAME; ValueError with one line."""
    if not HEADER.fullmatch(value):
        raise ValueError(f"--trusted-header {value[:60]!r}: expected a header name such as X-Forwarded-User")
    if value.lower() in RESERVED_HEADERS:
        raise ValueError(f"--trusted-header {value}: a header the browser or HTTP itself sets cannot name the user")
    return value


def parse_proxies(values) -> list:
    """--trusted-proxy values (addresses or networks) -> networks; ValueError with one line."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {str(value)[:60]!r}: expected an IP address or network "
                             "such as 127.0.0.1 or 10.0.0.0/8") from None
    return out
