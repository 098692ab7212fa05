"""The server's security layer: bind policy, token auth, origin and host guards, body limits, path and upload checks.

Secure by default: a server reachable from the network needs a token, browsers on other sites cannot
post to it or open its WebSocket, and nothing a client names can leave its folder.

The middlewares are pure ASGI (no `BaseHTTPMiddleware`), so streaming responses and WebSockets pass
through untouched. `protect(app, cfg)` stacks them in the right order:

    TokenAuth(HostGuard?(OriginGuard(BodyLimit(app))))

TokenAuth is outermost because it removes the `token` query parameter from `scope["query_string"]`
in place, and uvicorn's access log reads the path from that same scope dict: the token never
reaches a log line, even for a request another layer refuses.

Token transport (any one of them):
- `Authorization: Bearer <token>` or `X-Athena-Token: <token>` (scripts, API clients);
- `?token=<token>` (WebSocket clients and `<img src>`, which cannot set headers);
- the cookie `athena_token_<port>`, set (HttpOnly, SameSite=Strict, Secure over https) on the response
  to any request that authenticated with `?token=`. Opening `http://host:8188/?token=...` once in a browser
  is enough for the ComfyUI frontend: its fetches and its `/ws` handshake are same-origin and carry the cookie.
  The cookie holds HMAC-SHA256(token, "athena cookie v1"), not the token itself; it is a session cookie.
  The port is in its name because cookies are scoped by host, not by port.

Status codes: 401 no or wrong token; 403 foreign Origin / Host or a path leaving its root; 413 body or
image too large; 400 malformed name or image; 415 an image in a format that is not accepted.
A refused WebSocket is closed with code 1008 before it is accepted (uvicorn answers the handshake with 403).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import json
import os
import re
import secrets
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from athena.errors import AthenaError, ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MIN_TOKEN_LENGTH = 16
TOKEN_ENV = "ATHENA_TOKEN"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # everything else may change state
WS_POLICY_VIOLATION = 1008


# ---------------------------------------------------------------- errors

class RequestRefused(AthenaError):
    """A request is refused; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PathRefused(RequestRefused):
    """A client-supplied path is malformed (400) or would leave its root folder (403)."""


class UploadRefused(RequestRefused):
    """An uploaded file is too large (413), not an image or truncated (400), or of a refused format (415)."""


# ---------------------------------------------------------------- bind policy

def is_loopback(host: str) -> bool:
    """True for 'localhost', 127.0.0.0/8 and ::1 (bracketed or IPv4-mapped too); hostnames are not resolved."""
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost" or h.endswith(".localhost"):  # RFC 6761: *.localhost is loopback
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_token(token: str) -> None:
    """Raise ConfigError unless `token` is at least 16 visible ASCII characters (it travels in headers and URLs)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the access token is {len(token)} characters long, expected at least {MIN_TOKEN_LENGTH}; "
            f"generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    bad = sorted({c for c in token if not 0x21 <= ord(c) <= 0x7E})
    if bad:
        raise ConfigError(
            f"the access token contains {len(bad)} character(s) that are not visible ASCII (e.g. {bad[0]!r}); "
            f"use letters, digits and punctuation, e.g. secrets.token_urlsafe(32)")


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without a token (unless `insecure`), and refuse short tokens."""
    if token is not None:
        check_token(token)
    if token is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host!r} without an access token: anyone who can reach this address "
            f"could run workflows and read files. Set one with --token TOKEN or the {TOKEN_ENV} environment "
            f"variable (at least {MIN_TOKEN_LENGTH} characters, e.g. the output of "
            f"python -c 'import secrets; print(secrets.token_urlsafe(32))'), listen on 127.0.0.1, "
            f"or pass --insecure to accept the risk")


def new_token() -> str:
    """A fresh random token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


# ---------------------------------------------------------------- ASGI helpers

def _header(scope: Scope, name: bytes) -> list[str]:
    """All values of header `name` (lower-case bytes), decoded as latin-1."""
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                  headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer an HTTP request with `status` and `{"error": message}`, or close a WebSocket before accepting it."""
    if scope["type"] == "websocket":
        first = await receive()  # the websocket.connect message; closing before it is read is not ASGI
        if first["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": message[:120]})
        return
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _query_without(query: bytes, name: str) -> tuple[bytes, list[str]]:
    """`query` with every `name=` parameter removed (others kept byte for byte), and the removed values."""
    kept, values = [], []
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if urllib.parse.unquote_plus(key.decode("latin-1")) == name:
            values.append(urllib.parse.unquote_plus(value.decode("latin-1")))
        elif part:
            kept.append(part)
    return b"&".join(kept), values


def _cookies(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in _header(scope, b"cookie"):
        for item in header.split(";"):
            k, sep, v = item.strip().partition("=")
            if sep:
                out.setdefault(k.strip(), v.strip())
    return out


# ---------------------------------------------------------------- token auth

class TokenAuth:
    """Require the access token on every HTTP request and WebSocket handshake; a no-op when `token` is None."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        if token is not None:
            check_token(token)
        self.app = app
        self._token = token.encode() if token is not None else None
        # The cookie carries a derived value, so a leaked cookie jar does not reveal the token itself.
        self._cookie_value = (hmac.new(self._token, b"athena cookie v1", hashlib.sha256).hexdigest()
                              if self._token is not None else "")

    def _cookie_name(self, scope: Scope) -> str:
        server = scope.get("server")
        port = server[1] if server else None
        if port is None:
            port = 443 if scope.get("scheme") in ("https", "wss") else 80
        return f"athena_token_{port}"

    def _matches(self, candidate: str) -> bool:
        assert self._token is not None
        return hmac.compare_digest(candidate.encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Strip the query token in place first: uvicorn logs this very scope dict, whatever the outcome.
        query, query_tokens = _query_without(scope.get("query_string", b""), "token")
        if query_tokens:
            scope["query_string"] = query
        via_query = any(self._matches(t) for t in query_tokens)
        ok = via_query or any(self._matches(t) for t in self._header_tokens(scope))
        cookie_name = self._cookie_name(scope)
        if not ok:
            cookie = _cookies(scope).get(cookie_name)
            ok = cookie is not None and hmac.compare_digest(cookie.encode(errors="replace"),
                                                            self._cookie_value.encode())
        if not ok and self._is_preflight(scope):
            ok = True  # CORS preflights never carry credentials; the app's CORS layer (if any) answers them
        if not ok:
            sent = query_tokens or self._header_tokens(scope)
            reason = "wrong access token" if sent else "missing access token"
            await _refuse(scope, receive, send, 401,
                          f"{reason}: send 'Authorization: Bearer <token>', 'X-Athena-Token: <token>' "
                          f"or '?token=<token>'",
                          headers=[(b"www-authenticate", b'Bearer realm="athena"')])
            return
        if not (via_query and scope["type"] == "http"):
            await self.app(scope, receive, send)
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        set_cookie = f"{cookie_name}={self._cookie_value}; Path=/; HttpOnly; SameSite=Strict{secure}".encode()

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"set-cookie", set_cookie)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    @staticmethod
    def _header_tokens(scope: Scope) -> list[str]:
        tokens = _header(scope, b"x-athena-token")
        for value in _header(scope, b"authorization"):
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                tokens.append(credentials.strip())
        return tokens

    @staticmethod
    def _is_preflight(scope: Scope) -> bool:
        return (scope["type"] == "http" and scope.get("method") == "OPTIONS"
                and bool(_header(scope, b"origin")) and bool(_header(scope, b"access-control-request-method")))


# ---------------------------------------------------------------- origin and host guards

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
Origin = tuple[str, str, int]  # (scheme, host, port), scheme http/https, host lower-case without brackets


def _split_host(hostport: str) -> tuple[str, int | None] | None:
    """'Example.com:8188' -> ('example.com', 8188); '[::1]' -> ('::1', None); None if malformed."""
    try:
        parts = urllib.parse.urlsplit("//" + hostport)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return host.rstrip("."), port


def parse_origin(origin: str) -> Origin | None:
    """'http://Example.com' -> ('http', 'example.com', 80); None for 'null' and anything that is not an origin."""
    scheme, sep, rest = origin.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    split = _split_host(rest)
    if split is None:
        return None
    host, port = split
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def parse_allowed_origins(origins: Iterable[str]) -> set[Origin]:
    """Parse an allow-list of origins; ConfigError names the first entry that is not scheme://host[:port]."""
    allowed = set()
    for origin in origins:
        parsed = parse_origin(origin)
        if parsed is None:
            raise ConfigError(f"allowed origin {origin!r} is not an origin; expected scheme://host[:port], "
                              f"e.g. 'http://localhost:5173' (no path, no wildcard)")
        allowed.add(parsed)
    return allowed


def _own_origin(scope: Scope) -> Origin | None:
    """The origin the client addressed: the request's scheme and its Host header."""
    hosts = _header(scope, b"host")
    if len(hosts) != 1:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
    return parse_origin(f"{scheme}://{hosts[0]}")


class _Guard:
    """A middleware that answers 403 with `refusal(scope)`'s reason, or passes the request on."""

    app: ASGIApp

    def refusal(self, scope: Scope) -> str | None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            reason = self.refusal(scope)
            if reason is not None:
                await _refuse(scope, receive, send, 403, reason)
                return
        await self.app(scope, receive, send)


class OriginGuard(_Guard):
    """Refuse cross-origin state-changing requests and WebSocket handshakes (the CVE-2024-10481 class).

    A request that may change state (any method but GET/HEAD/OPTIONS) or opens a WebSocket is refused
    with 403 when its Origin is neither the server's own (scheme + Host) nor in `allowed_origins`,
    when its Origin is 'null' or malformed, or when it has no Origin but `Sec-Fetch-Site` says a
    different origin sent it. Requests with neither header (curl, scripts) pass.
    """

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = parse_allowed_origins(allowed_origins)

    def refusal(self, scope: Scope) -> str | None:
        """Why this request is refused, or None when it may pass."""
        if scope["type"] == "http" and scope.get("method", "GET").upper() in SAFE_METHODS:
            return None
        origins = _header(scope, b"origin")
        if not origins:
            site = (_header(scope, b"sec-fetch-site") or ["none"])[0].strip().lower()
            if site in ("cross-site", "same-site"):
                return f"cross-origin request refused: Sec-Fetch-Site is {site!r} and there is no Origin header"
            return None
        if len(origins) > 1:
            return "cross-origin request refused: more than one Origin header"
        parsed = parse_origin(origins[0])
        if parsed is None:
            return f"cross-origin request refused: Origin {origins[0][:100]!r} is not allowed"
        if parsed in self.allowed or parsed == _own_origin(scope):
            return None
        return (f"cross-origin request refused: Origin {origins[0][:100]!r} is not this server's origin; "
                f"if that site is trusted, add it to the allowed origins (athena serve --allow-origin ORIGIN)")



class HostGuard(_Guard):
    """Refuse requests whose Host header names another host: stops DNS rebinding against a tokenless loopback server."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS) -> None:
        self.app = app
        self.allowed = {h.strip().lower().strip("[]").rstrip(".") for h in allowed_hosts}

    def refusal(self, scope: Scope) -> str | None:
        hosts = _header(scope, b"host")
        if len(hosts) != 1:
            return "request refused: expected exactly one Host header"
        split = _split_host(hosts[0])
        if split is None:
            return f"request refused: malformed Host header {hosts[0][:100]!r}"
        if split[0] in self.allowed or is_loopback(split[0]):
            return None
        return (f"request refused: Host {split[0][:100]!r} is not this server's name; without a token the server "
                f"only answers to loopback names (start it with --token to serve other names)")



# ---------------------------------------------------------------- body limit

class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answer 413 when an HTTP body's Content-Length, or its streamed (chunked) length, exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ConfigError(f"BodyLimit max_bytes={max_bytes} is negative; expected a byte count >= 0")
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = _header(scope, b"content-length")
        if lengths:
            try:
                declared = int(lengths[0])
            except ValueError:
                await _refuse(scope, receive, send, 400, f"malformed Content-Length {lengths[0][:40]!r}")
                return
            if declared > self.max_bytes:
                await _refuse(scope, receive, send, 413, self._message())
                return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # The app may turn our exception into its own error (FastAPI answers 400 "error parsing
                # the body"); replace that response with the 413 it should be.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _refuse(scope, receive, send, 413, self._message())
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await _refuse(scope, receive, send, 413, self._message())


# ---------------------------------------------------------------- rate limiting

@dataclass
class RateLimiter:
    """Token-bucket rate limit per key (client id or remote address); one instance per app, thread-safe."""

    rate_per_s: float
    burst: float
    max_keys: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)  # key -> (tokens, time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or not self.burst >= 1:
            raise ConfigError(f"RateLimiter(rate_per_s={self.rate_per_s}, burst={self.burst}): "
                              f"expected rate_per_s > 0 and burst >= 1")

    def check(self, key: str, cost: float = 1.0) -> float | None:
        """Take `cost` tokens from `key`'s bucket: None if allowed, else the seconds to wait (for Retry-After)."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                self._prune(now)
                return None
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        """Forget full buckets (indistinguishable from new ones) once there are more than `max_keys`."""
        if len(self._buckets) <= self.max_keys:
            return
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate_per_s >= self.burst:
                del self._buckets[key]
        while len(self._buckets) > self.max_keys:  # all busy: drop the least recently seen
            del self._buckets[min(self._buckets, key=lambda k: self._buckets[k][1])]


def client_key(scope: Scope) -> str:
    """The rate-limit key of a request: its remote address (proxies must set it via uvicorn's --proxy-headers)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


# ---------------------------------------------------------------- paths

_DRIVE = re.compile(r"^[A-Za-z]:")


def _path_problem(what: str, value: str) -> PathRefused | None:
    """The first problem with one client-supplied relative path, checked at each percent-decoding level."""
    seen = value
    for _ in range(4):  # catch %2e%2e and %252e%252e: some later layer might decode again
        if "\x00" in seen:
            return PathRefused(f"{what} contains a NUL byte", 400)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in seen):
            return PathRefused(f"{what} {value!r} contains a control character", 400)
        if "\\" in seen:
            return PathRefused(f"{what} {value!r} contains a backslash; use '/' between folders", 400)
        if seen.startswith("/") or _DRIVE.match(seen):
            return PathRefused(f"{what} {value!r} is an absolute path; expected a path relative to its folder", 403)
        parts = seen.split("/")
        if ".." in parts:
            return PathRefused(f"{what} {value!r} contains a '..' component; paths must stay inside their folder", 403)
        if any(_DRIVE.match(p) for p in parts):
            return PathRefused(f"{what} {value!r} contains a drive letter", 403)
        decoded = urllib.parse.unquote(seen)
        if decoded == seen:
            return None
        seen = decoded
    return PathRefused(f"{what} {value!r} is percent-encoded more than 3 times", 400)


def confined_path(root: Path, subfolder: str, filename: str) -> Path:
    """The real path of `root/subfolder/filename`, refusing anything (.., absolute, symlinks) that leaves `root`."""
    if not filename or filename.strip("/") in ("", "."):
        raise PathRefused(f"filename {filename!r} is empty; expected a file name", 400)
    for what, value in (("subfolder", subfolder), ("filename", filename)):
        problem = _path_problem(what, value)
        if problem is not None:
            raise problem
        if any(len(part.encode()) > 255 for part in value.split("/")):  # the file system's limit per name
            raise PathRefused(f"{what} has a part longer than 255 bytes", 400)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, subfolder, filename))
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise PathRefused(f"{subfolder + '/' if subfolder else ''}{filename} resolves outside its folder "
                          f"(through a symbolic link)", 403)
    return Path(real)


# ---------------------------------------------------------------- uploads

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# Image formats we recognise only to say "not accepted" (415) instead of "not an image" (400).
_OTHER_FORMATS: tuple[tuple[bytes, int, str], ...] = (  # (magic, offset, name)
    (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"), (b"8BPS", 0, "PSD"), (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"ftypavif", 4, "AVIF"), (b"ftypheic", 4, "HEIC"), (b"ftypmif1", 4, "HEIF"), (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"), (b"%!PS", 0, "EPS"), (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
)


def verify_image(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Check an uploaded image and return (Pillow format, (width, height)); raise UploadRefused otherwise.

    The pixel count is checked from the header before any pixel is decoded (decompression bombs);
    only the first frame of an animation is decoded. Pillow's global MAX_IMAGE_PIXELS is left alone.
    """
    if len(data) > max_bytes:
        raise UploadRefused(f"upload is {len(data)} bytes; the limit is {max_bytes}", 413)
    for magic, offset, name in _OTHER_FORMATS:
        if data[offset:offset + len(magic)] == magic:
            raise UploadRefused(f"{name} images are not accepted; expected one of "
                                f"{', '.join(ACCEPTED_FORMATS)}", 415)
    try:
        # `formats=` keeps every other Pillow plugin (EPS via Ghostscript, ...) away from untrusted bytes.
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            width, height = img.size
            fmt = str(img.format)
            if fmt not in ACCEPTED_FORMATS:
                raise UploadRefused(f"{fmt} images are not accepted; expected one of {', '.join(ACCEPTED_FORMATS)}",
                                    415)
            if width <= 0 or height <= 0:
                raise UploadRefused(f"image declares an empty size {width}x{height}", 400)
            if width * height > max_pixels:
                raise UploadRefused(f"image is {width}x{height} = {width * height} pixels; the limit is "
                                    f"{max_pixels}", 413)
            img.load()
    except UnidentifiedImageError:
        raise UploadRefused(f"upload is not a {', '.join(ACCEPTED_FORMATS)} image "
                            f"(it starts with {data[:8]!r})", 400) from None
    except Image.DecompressionBombError as e:  # Pillow's own (global) limit tripped at open; still a bomb
        raise UploadRefused(f"image is too large: {e}", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UploadRefused(f"image is truncated or corrupt: {e}", 400) from None
    return fmt, (width, height)


_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                               *(f"lpt{i}" for i in range(10))})
_MAX_NAME_BYTES = 200


def _safe_chars(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.() " else "_" for c in s)


def safe_upload_name(name: str) -> str:
    """A client's file name reduced to a safe base name (no folders, no hidden or reserved names), extension kept."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UploadRefused(f"file name {name!r} contains a control character", 400)
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    base = base.strip().lstrip(".").rstrip(". ")  # no hidden files; Windows drops trailing dots and spaces
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem, ext = _safe_chars(stem).strip(), re.sub(r"[^0-9A-Za-z]", "", ext)[:16]
    if not stem.strip("._ "):
        raise UploadRefused(f"file name {name!r} has no usable name; expected something like 'image.png'", 400)
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    while len(stem.encode()) > _MAX_NAME_BYTES:
        stem = stem[:-1]
    return f"{stem}.{ext}" if ext else stem


# ---------------------------------------------------------------- assembly

@dataclass(frozen=True)
class SecurityConfig:
    """The server's security settings; constructing one applies the bind policy (`check_bind`)."""

    host: str = "127.0.0.1"
    token: str | None = None
    insecure: bool = False
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # extra names a tokenless loopback server answers to
    max_body_bytes: int = 100 * 2**20  # ComfyUI's default max upload size

    def __post_init__(self) -> None:
        check_bind(self.host, self.token, self.insecure)
        parse_allowed_origins(self.allowed_origins)


def protect(app: ASGIApp, cfg: SecurityConfig) -> ASGIApp:
    """Wrap `app` in the security middlewares, outermost first: token, host (tokenless loopback only), origin, body."""
    wrapped: ASGIApp = BodyLimit(app, cfg.max_body_bytes)
    wrapped = OriginGuard(wrapped, cfg.allowed_origins)
    if cfg.token is None and is_loopback(cfg.host):
        wrapped = HostGuard(wrapped, (*LOOPBACK_HOSTS, *cfg.allowed_hosts))
    return TokenAuth(wrapped, cfg.token)
