"""The security layer: bind policy, token auth, origin/host guards, body limit, rate limit, paths and uploads."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from athena.errors import ConfigError
from athena.server.security import (
    BodyLimit, HostGuard, OriginGuard, PathRefused, RateLimiter, SecurityConfig, TokenAuth, UploadRefused,
    check_bind, confined_path, is_loopback, protect, safe_upload_name, verify_image,
)

TOKEN = "s3cret-token-0123456789abcdef"


# ---------------------------------------------------------------- a tiny app

async def index(request: Request) -> JSONResponse:
    return JSONResponse({"query": request.scope["query_string"].decode()})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"size": len(await request.body())})


async def ws_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text("hello")
    await ws.close()


def make_app() -> Starlette:
    return Starlette(routes=[Route("/", index), Route("/echo", echo, methods=["POST", "PUT", "DELETE"]),
                             WebSocketRoute("/ws", ws_endpoint)])


def call(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver") as client:
            return await client.request(method, url, **kwargs)
    return asyncio.run(go())


def ws_refused(client: TestClient, url: str, **kwargs: Any) -> int:
    with pytest.raises(WebSocketDisconnect) as exc:
        with client.websocket_connect(url, **kwargs):
            pass
    return exc.value.code


def ws_hello(client: TestClient, url: str, **kwargs: Any) -> str:
    with client.websocket_connect(url, **kwargs) as ws:
        return ws.receive_text()


# ---------------------------------------------------------------- bind policy

@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]",
                                  "::ffff:127.0.0.1", "app.localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None, False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", "", "fe80::1"])
def test_network_bind_needs_a_token_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="--token.*ATHENA_TOKEN.*--insecure"):
        check_bind(host, None, False)
    check_bind(host, TOKEN, False)
    check_bind(host, None, True)
    check_bind(host, TOKEN, True)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("token", ["short", "", "x" * 15, "a token with spaces!", "tökén-0123456789abcdef"])
def test_weak_tokens_are_refused_everywhere(host: str, token: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        check_bind(host, token, True)


def test_security_config_applies_the_bind_policy() -> None:
    with pytest.raises(ConfigError):
        SecurityConfig(host="0.0.0.0")
    assert SecurityConfig(host="0.0.0.0", token=TOKEN).token == TOKEN


# ---------------------------------------------------------------- token auth

def test_no_token_configured_is_a_no_op() -> None:
    app = TokenAuth(make_app(), None)
    r = call(app, "GET", "/?a=1&token=whatever")
    assert r.status_code == 200 and r.json()["query"] == "a=1&token=whatever"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong-token-0123456789"},
                                     {"x-athena-token": TOKEN[:-1]}, {"authorization": f"Basic {TOKEN}"},
                                     {"cookie": f"athena_token={TOKEN}"}])
def test_http_without_the_right_token_gets_401(headers: dict[str, str]) -> None:
    r = call(TokenAuth(make_app(), TOKEN), "GET", "/", headers=headers)
    assert r.status_code == 401
    assert "error" in r.json() and TOKEN not in r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {TOKEN}"}, {"authorization": f"bearer  {TOKEN}"},
                                     {"x-athena-token": TOKEN}])
def test_http_with_a_header_token_passes(headers: dict[str, str]) -> None:
    r = call(TokenAuth(make_app(), TOKEN), "GET", "/", headers=headers)
    assert r.status_code == 200 and "set-cookie" not in r.headers


def test_query_token_is_stripped_from_the_scope_and_sets_a_cookie() -> None:
    app = TokenAuth(make_app(), TOKEN)
    r = call(app, "GET", f"/?a=1&token={TOKEN}&b=%20x")
    assert r.status_code == 200
    assert r.json()["query"] == "a=1&b=%20x"  # what uvicorn's access log will print
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    name_value = cookie.split(";")[0]
    # The ComfyUI frontend's later fetches carry only the cookie.
    assert call(app, "GET", "/", headers={"cookie": f"other=1; {name_value}"}).status_code == 200
    assert call(app, "POST", "/echo", headers={"cookie": name_value}, content=b"abc").json() == {"size": 3}
    forged = name_value.split("=")[0] + "=" + "0" * 64
    assert call(app, "GET", "/", headers={"cookie": forged}).status_code == 401


def test_wrong_query_token_is_stripped_too() -> None:
    seen: list[bytes] = []

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["query_string"])
        await make_app()(scope, receive, send)

    outer = TokenAuth(spy, TOKEN)

    async def capture(scope: Any, receive: Any, send: Any) -> None:  # sees the scope dict uvicorn logs
        await outer(scope, receive, send)
        seen.append(scope["query_string"])

    assert call(capture, "GET", "/?token=almost-the-token-123&x=1").status_code == 401
    assert seen == [b"x=1"]
    assert call(capture, "GET", f"/?token={TOKEN}").status_code == 200
    assert seen[1:] == [b"", b""]


def test_websocket_token() -> None:
    client = TestClient(TokenAuth(make_app(), TOKEN))
    assert ws_refused(client, "/ws") == 1008
    assert ws_refused(client, "/ws?token=wrong-token-0123456789") == 1008
    assert ws_hello(client, f"/ws?clientId=abc&token={TOKEN}") == "hello"
    assert ws_hello(client, "/ws", headers={"authorization": f"Bearer {TOKEN}"}) == "hello"
    cookie = call(TokenAuth(make_app(), TOKEN), "GET", f"/?token={TOKEN}").headers["set-cookie"].split(";")[0]
    assert ws_hello(client, "/ws", headers={"cookie": cookie}) == "hello"


def test_cors_preflight_passes_without_a_token() -> None:
    headers = {"origin": "http://localhost:5173", "access-control-request-method": "POST"}
    assert call(TokenAuth(make_app(), TOKEN), "OPTIONS", "/echo", headers=headers).status_code != 401
    assert call(TokenAuth(make_app(), TOKEN), "OPTIONS", "/echo").status_code == 401


# ---------------------------------------------------------------- origin guard

@pytest.mark.parametrize("origin,status", [
    (None, 200), ("http://testserver", 200), ("HTTP://TestServer:80", 200), ("http://localhost:5173", 200),
    ("http://evil.example", 403), ("null", 403), ("https://testserver", 403), ("http://testserver:8188", 403),
    ("http://testserver.evil.example", 403), ("garbage", 403), ("file://", 403),
])
def test_origin_guard_on_post(origin: str | None, status: int) -> None:
    app = OriginGuard(make_app(), ["http://localhost:5173"])
    headers = {"origin": origin} if origin is not None else {}
    r = call(app, "POST", "/echo", headers=headers, content=b"x")
    assert r.status_code == status
    if status == 403:
        assert "error" in r.json()
    for method in ("PUT", "DELETE"):
        assert call(app, method, "/echo", headers=headers).status_code == status


def test_origin_guard_lets_reads_through() -> None:
    app = OriginGuard(make_app())
    assert call(app, "GET", "/", headers={"origin": "http://evil.example"}).status_code == 200
    assert call(app, "GET", "/", headers={"sec-fetch-site": "cross-site"}).status_code == 200


@pytest.mark.parametrize("site,status", [("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)])
def test_sec_fetch_site_without_origin(site: str, status: int) -> None:
    r = call(OriginGuard(make_app()), "POST", "/echo", headers={"sec-fetch-site": site})
    assert r.status_code == status


def test_origin_guard_on_websocket() -> None:
    client = TestClient(OriginGuard(make_app(), ["http://localhost:5173"]))
    assert ws_refused(client, "/ws", headers={"origin": "http://evil.example"}) == 1008
    assert ws_refused(client, "/ws", headers={"origin": "null"}) == 1008
    assert ws_hello(client, "/ws", headers={"origin": "http://testserver"}) == "hello"
    assert ws_hello(client, "/ws", headers={"origin": "http://localhost:5173"}) == "hello"
    assert ws_hello(client, "/ws") == "hello"


@pytest.mark.parametrize("bad", ["*", "null", "localhost:5173", "http://x/path", "ftp://x"])
def test_allowed_origins_are_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="origin"):
        OriginGuard(make_app(), [bad])


def test_host_guard_stops_dns_rebinding() -> None:
    app = HostGuard(make_app(), ["athena.lan"])
    for host in ("localhost:8188", "127.0.0.1:8188", "[::1]:8188", "athena.lan"):
        assert call(app, "GET", "/", headers={"host": host}).status_code == 200
    assert call(app, "GET", "/", headers={"host": "rebind.evil.example:8188"}).status_code == 403
    assert ws_refused(TestClient(HostGuard(make_app())), "/ws") == 1008  # TestClient's Host is 'testserver'


def test_protect_stacks_everything() -> None:
    app = protect(make_app(), SecurityConfig(host="0.0.0.0", token=TOKEN, max_body_bytes=10))
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert call(app, "POST", "/echo", content=b"x").status_code == 401
    assert call(app, "POST", "/echo", headers={**auth, "origin": "http://evil.example"}).status_code == 403
    assert call(app, "POST", "/echo", headers=auth, content=b"x" * 11).status_code == 413
    assert call(app, "POST", "/echo", headers=auth, content=b"x" * 10).json() == {"size": 10}
    local = protect(make_app(), SecurityConfig())
    assert call(local, "GET", "/", headers={"host": "localhost:8188"}).status_code == 200
    assert call(local, "GET", "/", headers={"host": "evil.example"}).status_code == 403


# ---------------------------------------------------------------- body limit

async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"x" * size


def test_body_limit_by_content_length() -> None:
    app = BodyLimit(make_app(), 100)
    assert call(app, "POST", "/echo", content=b"x" * 100).json() == {"size": 100}
    r = call(app, "POST", "/echo", content=b"x" * 101)
    assert r.status_code == 413 and "100 bytes" in r.json()["error"]
    assert call(app, "POST", "/echo", headers={"content-length": "nope"}).status_code == 400


def test_body_limit_on_a_chunked_stream() -> None:
    app = BodyLimit(make_app(), 100)
    r = call(app, "POST", "/echo", content=chunks(4, 25))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.json() == {"size": 100}
    assert call(app, "POST", "/echo", content=chunks(5, 25)).status_code == 413


class Item(BaseModel):
    text: str


def test_body_limit_overrides_fastapis_body_error() -> None:
    api = FastAPI()

    @api.post("/items")
    async def items(body: Item) -> dict[str, int]:
        return {"n": len(body.text)}

    app = BodyLimit(api, 50)

    async def big() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        yield b"y" * 100
        yield b'"}'

    assert call(app, "POST", "/items", json={"text": "hi"}).json() == {"n": 2}
    assert call(app, "POST", "/items", content=big(), headers={"content-type": "application/json"}).status_code == 413


# ---------------------------------------------------------------- rate limit

def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    assert limiter.check("a") == pytest.approx(0.5)
    assert limiter.check("b") is None  # keys are independent
    now[0] = 0.5
    assert limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(0.5)
    now[0] = 100.0
    assert [limiter.check("a") for _ in range(4)][-1] is not None  # refills to burst, never beyond


def test_rate_limiter_forgets_idle_clients() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_keys=10, clock=lambda: now[0])
    for i in range(100):
        now[0] += 0.01
        limiter.check(f"client{i}")
    assert len(limiter._buckets) <= 10
    with pytest.raises(ConfigError):
        RateLimiter(rate_per_s=0, burst=1)


# ---------------------------------------------------------------- paths

@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "output"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(b"a")
    (root / "sub" / "b.png").write_bytes(b"b")
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "c.png").write_bytes(b"c")
    (root / "evil.png").symlink_to(tmp_path / "secret.txt")
    (root / "evil_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "alias.png").symlink_to(root / "sub" / "b.png")
    return root


def test_confined_path_accepts_files_inside(root: Path) -> None:
    assert confined_path(root, "", "a.png").read_bytes() == b"a"
    assert confined_path(root, "sub", "b.png").read_bytes() == b"b"
    assert confined_path(root, "", "sub/b.png").read_bytes() == b"b"
    assert confined_path(root, "", "alias.png").read_bytes() == b"b"  # a symlink that stays inside
    assert confined_path(root, "new", "upload.png") == (root / "new" / "upload.png").resolve()  # not yet there


@pytest.mark.parametrize("subfolder,filename", [
    ("", "../secret.txt"), ("..", "secret.txt"), ("sub/../..", "secret.txt"), ("", "sub/../../secret.txt"),
    ("", "%2e%2e/secret.txt"), ("", "..%2fsecret.txt"), ("", "%2e%2e%2fsecret.txt"), ("%2e%2e", "secret.txt"),
    ("", "%252e%252e/secret.txt"), ("", "%25252e%25252e%25252fsecret.txt"), ("", ".%2e/secret.txt"),
    ("", "/etc/passwd"), ("/etc", "passwd"), ("", "%2fetc/passwd"), ("", "C:/Windows/win.ini"), ("c:", "x.png"),
    ("sub", "D:x.png"),
])
def test_confined_path_refuses_traversal(root: Path, subfolder: str, filename: str) -> None:
    with pytest.raises(PathRefused) as exc:
        confined_path(root, subfolder, filename)
    assert exc.value.status == 403


@pytest.mark.parametrize("subfolder,filename", [
    ("", "a.png\x00.txt"), ("sub\x00", "b.png"), ("", "a.png%00"), ("", "..\\secret.txt"), ("sub\\..", "a.png"),
    ("", "..%5csecret.txt"), ("", ""), ("sub", "/"), ("", "a\npng"),
])
def test_confined_path_refuses_malformed_names(root: Path, subfolder: str, filename: str) -> None:
    with pytest.raises(PathRefused) as exc:
        confined_path(root, subfolder, filename)
    assert exc.value.status in (400, 403)


@pytest.mark.parametrize("subfolder,filename", [("", "evil.png"), ("evil_dir", "c.png"), ("", "evil_dir/c.png")])
def test_confined_path_refuses_symlinks_out_of_the_root(root: Path, subfolder: str, filename: str) -> None:
    with pytest.raises(PathRefused, match="outside") as exc:
        confined_path(root, subfolder, filename)
    assert exc.value.status == 403


def test_confined_path_through_a_symlinked_root(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "root_link"
    link.symlink_to(root, target_is_directory=True)
    assert confined_path(link, "", "a.png").read_bytes() == b"a"
    with pytest.raises(PathRefused):
        confined_path(link, "", "evil.png")


# ---------------------------------------------------------------- uploads

def encode(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 10) if mode == "RGB" else 0).save(buf, format=fmt)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched to declare width x height (with a valid CRC): a decompression bomb header."""
    data = bytearray(encode("PNG", (1, 1)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_verify_image_accepts_the_five_formats(fmt: str) -> None:
    assert verify_image(encode(fmt), max_bytes=10**6, max_pixels=10**6) == (fmt, (8, 6))


def test_verify_image_refuses_bombs_before_decoding() -> None:
    with pytest.raises(UploadRefused, match="pixels") as exc:  # our limit, far below Pillow's global one
        verify_image(png_declaring(5000, 5000), max_bytes=10**6, max_pixels=10**6)
    assert exc.value.status == 413  # 413, not "truncated" (400): refused before any pixel was read
    with pytest.raises(UploadRefused) as exc:  # past Pillow's global limit too
        verify_image(png_declaring(100_000, 100_000), max_bytes=10**6, max_pixels=10**12)
    assert exc.value.status == 413
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global was left alone


def test_verify_image_refuses_too_many_bytes() -> None:
    with pytest.raises(UploadRefused) as exc:
        verify_image(encode("PNG"), max_bytes=10, max_pixels=10**6)
    assert exc.value.status == 413


def test_verify_image_refuses_truncated_and_non_images() -> None:
    noisy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    for bad, reason in [(buf.getvalue()[: len(buf.getvalue()) // 2], "truncated"),
                        (b"hello, world", "not a"), (b"", "not a"), (b"<svg xmlns='x'/>", "not a")]:
        with pytest.raises(UploadRefused, match=reason) as exc:
            verify_image(bad, max_bytes=10**6, max_pixels=10**6)
        assert exc.value.status == 400


def test_verify_image_refuses_other_formats() -> None:
    with pytest.raises(UploadRefused, match="TIFF") as exc:
        verify_image(encode("TIFF"), max_bytes=10**6, max_pixels=10**6)
    assert exc.value.status == 415


@pytest.mark.parametrize("name,safe", [
    ("photo.png", "photo.png"), ("../../etc/passwd", "passwd"), ("C:\\Users\\me\\Cat Pic (1).PNG", "Cat Pic (1).PNG"),
    ("dir/.hidden.png", "hidden.png"), ("a;rm -rf $HOME.jpg", "a_rm -rf _HOME.jpg"), ("été.webp", "été.webp"),
    ("con.png", "_con.png"), ("\u202egnp.exe", "_gnp.exe"), ("image.p/n\\g", "g"), ("x.tar.gz", "x.tar.gz"),
    ("name.", "name"), ("a.we!rd", "a.werd"), ("x" * 300 + ".png", "x" * 200 + ".png"),
])
def test_safe_upload_name(name: str, safe: str) -> None:
    assert safe_upload_name(name) == safe


@pytest.mark.parametrize("name", ["", ".", "..", "...", "a/..", "dir/", " ", "a\x00.png", "a\n.png", "_.png", "\x7f"])
def test_safe_upload_name_refuses(name: str) -> None:
    with pytest.raises(UploadRefused):
        safe_upload_name(name)
