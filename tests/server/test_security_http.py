"""Attacks against a real `athena serve`: path traversal, cross-origin writes, the access token, oversized bodies and
images, and a malicious pickle. Each is refused with the right status, and the file system is checked too: nothing
is written outside the folder a route may write in."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.server.conftest import Server, make_server
from tests.server.test_http import BASIC

TOKEN = "Zq3-athena-test-token-0123456789"  # 32 characters
SECRET = b"the secret outside every served folder"


# ---------------------------------------------------------------- helpers

class Evil:
    """Unpickling this runs `touch <marker>`: what a malicious .ckpt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(side: int = 10_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (100 M) whose compressed data is a few kilobytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(bytes(side * (1 + (side + 7) // 8)), 9)  # filter byte 0 + zero pixels, per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def tree(root: Path, *allowed: str) -> dict[str, bytes]:
    """Every file under `root` with its content, except under the `allowed` folders, the log and the job store."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and rel != "server.log" and not rel.startswith("data/jobs.sqlite3") \
                and not any(rel == a or rel.startswith(a + "/") for a in allowed):
            out[rel] = p.read_bytes()
    return out


def wait_job(srv: Server, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{srv.url}/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def spawn(srv: Server, *args: str, token: str | None = None, timeout: float = 120) -> Server:
    """Start `srv` like Server.start, but with uvicorn's access log on (no --quiet) and health checked with `token`."""
    log = open(srv.root / "server.log", "ab")  # noqa: SIM115 (the child writes to it)
    srv.proc = subprocess.Popen([sys.executable, "-m", "athena.cli", "serve", "--port", str(srv.port), *srv.args,
                                 *args], stdout=log, stderr=log, env={**os.environ})
    headers = {"X-Athena-Token": token} if token else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"server exited: {(srv.root / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{srv.url}/api/v1/health", headers=headers, timeout=1).status_code == 200:
                return srv
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def srv(tmp_path_factory, models) -> Iterator[Server]:
    """A loopback server whose models folder also holds two malicious pickles, and a secret file beside its folders."""
    root = tmp_path_factory.mktemp("attacked")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "tiny_sd1.safetensors").symlink_to(models / "checkpoints" / "tiny_sd1.safetensors")
    torch.save({"state_dict": {"w": Evil(root / "MARKER_zip")}}, ckpts / "evil_zip.ckpt")
    (ckpts / "evil_legacy.ckpt").write_bytes(pickle.dumps({"state_dict": {"w": Evil(root / "MARKER_legacy")}}))
    (root / "secret.txt").write_bytes(SECRET)
    (root / "secret.png").write_bytes(png())
    server = make_server(root, root / "models").start()
    yield server
    server.stop()


# ---------------------------------------------------------------- path traversal: /view

VIEW_ATTACKS = [  # (raw query string, status)
    ("filename=../secret.txt", 403),
    ("filename=%2e%2e%2fsecret.txt", 403),
    ("filename=%252e%252e%252fsecret.txt", 403),  # double-encoded
    ("filename=%25252e%25252e%25252fsecret.txt", 403),  # triple-encoded
    ("filename=/etc/passwd", 403),
    ("filename=%2Fetc%2Fpasswd&type=input", 403),
    ("filename=secret.txt&subfolder=..", 403),
    ("filename=secret.txt&subfolder=%2e%2e", 403),
    ("filename=secret.txt&subfolder=a/../..", 403),
    ("filename=../secret.txt%00.png", 400),
    ("filename=secret.txt%00../../x", 400),
    ("filename=..%5Csecret.txt", 400),  # backslash
    ("filename=..\\secret.txt", 400),
    ("filename=secret.txt&subfolder=..%5C..", 400),
    ("filename=C:%5Cwindows%5Cwin.ini", 400),
    ("filename=link.txt", 403),  # a symlink inside output/ pointing outside
    ("filename=secret.txt&subfolder=linkdir", 403),  # a symlinked folder inside output/
    ("filename=../secret.txt&type=temp", 403),
    ("filename=secret.txt&type=../..", 400),
]


@pytest.mark.parametrize("query,status", VIEW_ATTACKS)
@pytest.mark.parametrize("prefix", ["/view", "/api/view"])
def test_view_refuses_paths_outside_its_folder(srv, query, status, prefix):
    if not (srv.output / "link.txt").is_symlink():
        (srv.output / "link.txt").symlink_to(srv.root / "secret.txt")
        (srv.output / "linkdir").symlink_to(srv.root)
    r = httpx.get(f"{srv.url}{prefix}?{query}")
    assert r.status_code == status, (query, r.status_code, r.text)
    assert SECRET not in r.content and b"root:" not in r.content
    assert "error" in r.json()


@pytest.mark.parametrize("path", ["..%2Fsecret.txt", "%2e%2e%2Fsecret.txt", "linkdir/secret.txt", "link.txt",
                                  "%2Fetc%2Fpasswd"])
def test_native_outputs_refuse_paths_outside_the_output_folder(srv, path):
    if not (srv.output / "link.txt").is_symlink():
        (srv.output / "link.txt").symlink_to(srv.root / "secret.txt")
        (srv.output / "linkdir").symlink_to(srv.root)
    r = httpx.get(f"{srv.url}/api/v1/outputs/{path}")
    assert r.status_code in (403, 404), (path, r.status_code)  # 404: the router never matched a leading '/'
    assert SECRET not in r.content and b"root:" not in r.content


@pytest.mark.parametrize("path", ["/view?filename=LONG", "/api/v1/outputs/LONG", "/userdata/LONG",
                                  "/userdata?dir=LONG", "/v2/userdata?path=LONG"])
def test_overlong_names_are_a_400(srv, path):
    r = httpx.get(srv.url + path.replace("LONG", "a" * 300))
    assert r.status_code == 400, r.status_code


# ---------------------------------------------------------------- path traversal: uploads

def test_upload_names_are_reduced_to_a_base_name_inside_input(srv):
    before, tmp_evil = tree(srv.root, "input"), Path("/tmp/evil.png").exists()
    for name in ("../../evil.png", "/tmp/evil.png", "..\\..\\evil.png", "%2e%2e%2fevil.png"):
        r = httpx.post(f"{srv.url}/upload/image", files={"image": (name, png(), "image/png")})
        assert r.status_code == 200, r.text
        saved = r.json()
        assert "/" not in saved["name"] and "\\" not in saved["name"] and not saved["name"].startswith(".")
        assert saved["subfolder"] == "" and (srv.root / "input" / saved["name"]).is_file()
    assert tree(srv.root, "input") == before
    assert Path("/tmp/evil.png").exists() == tmp_evil


@pytest.mark.parametrize("fields,status", [
    ({"subfolder": "../x"}, 403), ({"subfolder": ".."}, 403), ({"subfolder": "/tmp/x"}, 403),
    ({"subfolder": "%2e%2e"}, 403), ({"subfolder": "a\\..\\.."}, 400), ({"subfolder": "a\x00"}, 400),
    ({"subfolder": "..", "type": "output"}, 403), ({"subfolder": "x", "type": "../data"}, 400),
])
@pytest.mark.parametrize("route", ["/upload/image", "/upload/mask"])
def test_upload_refuses_folders_outside_its_root(srv, fields, status, route):
    before = tree(srv.root)
    data = {**fields, "original_ref": json.dumps({"filename": "secret.png", "subfolder": "..", "type": "input"})}
    r = httpx.post(f"{srv.url}{route}", files={"image": ("evil.png", png(), "image/png")}, data=data)
    assert r.status_code == status, (fields, r.status_code, r.text)
    assert tree(srv.root) == before


def test_upload_refuses_symlinked_folders_leaving_input(srv):
    (srv.root / "input").mkdir(exist_ok=True)
    link = srv.root / "input" / "out_link"
    if not link.is_symlink():
        link.symlink_to(srv.root)
    before = tree(srv.root)
    r = httpx.post(f"{srv.url}/upload/image", files={"image": ("evil.png", png(), "image/png")},
                   data={"subfolder": "out_link"})
    assert r.status_code == 403, r.text
    assert tree(srv.root) == before and not (srv.root / "evil.png").exists()


@pytest.mark.parametrize("ref,status", [
    ({"filename": "secret.png", "subfolder": "..", "type": "input"}, 403),
    ({"filename": "../secret.png", "type": "input"}, 403),
    ({"filename": "%2e%2e%2fsecret.png", "type": "input"}, 403),
    ({"filename": str(Path("/etc/passwd")), "type": "input"}, 403),
    ({"filename": "secret.png", "type": "../"}, 400),
    ({"filename": "no_such.png"}, 400),
    ({"subfolder": ""}, 400),
    (["not", "an", "object"], 400),
    ("not json", 400),
    ({"filename": ["a"], "subfolder": 1}, 400),
])
def test_mask_upload_refuses_an_original_outside_its_folder(srv, ref, status):
    before = tree(srv.root)
    original_ref = ref if isinstance(ref, str) else json.dumps(ref)
    r = httpx.post(f"{srv.url}/upload/mask", files={"image": ("mask.png", png(), "image/png")},
                   data={"original_ref": original_ref})
    assert r.status_code == status, (ref, r.status_code, r.text)
    assert tree(srv.root) == before  # not even the mask was written


def test_mask_upload_with_a_non_image_original_is_a_400(srv):
    (srv.root / "input").mkdir(exist_ok=True)
    (srv.root / "input" / "notes.png").write_bytes(b"not an image")
    r = httpx.post(f"{srv.url}/upload/mask", files={"image": ("mask.png", png(), "image/png")},
                   data={"original_ref": json.dumps({"filename": "notes.png"})})
    assert r.status_code == 400, r.text


# ---------------------------------------------------------------- path traversal: user data

USERDATA_ATTACKS = ["..%2F..%2Fevil", "..%2F..%2F..%2Fevil", "%2e%2e%2F%2e%2e%2Fevil", "..%252F..%252Fevil",
                    "sub%2F..%2F..%2F..%2Fevil", "..%5C..%5Cevil", "%2Ftmp%2Fathena_evil", "evil%00.json"]


@pytest.mark.parametrize("name", USERDATA_ATTACKS)
@pytest.mark.parametrize("prefix", ["", "/api"])
def test_userdata_refuses_names_outside_the_user_folder(srv, name, prefix):
    before = tree(srv.root, "data/user/default")
    base = f"{srv.url}{prefix}/userdata"
    assert httpx.post(f"{base}/{name}", content=b"pwned").status_code in (400, 403)
    assert httpx.get(f"{base}/{name}").status_code in (400, 403)
    assert httpx.delete(f"{base}/{name}").status_code in (400, 403)
    httpx.post(f"{base}/ok.json", content=b"{}").raise_for_status()
    moved = httpx.post(f"{base}/ok.json/move/{name}")
    assert moved.status_code in (400, 403), moved.text
    assert tree(srv.root, "data/user/default") == before
    assert not Path("/tmp/athena_evil").exists()


@pytest.mark.parametrize("query", ["dir=..", "dir=..%2F..", "dir=%2Fetc"])
def test_userdata_listings_stay_in_the_user_folder(srv, query):
    assert httpx.get(f"{srv.url}/userdata?{query}").status_code == 403
    path_query = query.replace("dir=", "path=")
    assert httpx.get(f"{srv.url}/v2/userdata?{path_query}").status_code == 403


def test_userdata_move_out_of_the_user_folder_keeps_the_file(srv):
    httpx.post(f"{srv.url}/userdata/keep.json", content=b"{}").raise_for_status()
    assert httpx.post(f"{srv.url}/userdata/keep.json/move/..%2F..%2Fkept.json").status_code == 403
    assert (srv.root / "data" / "user" / "default" / "keep.json").is_file()
    assert not (srv.root / "data" / "kept.json").exists()


# ---------------------------------------------------------------- path traversal: filename_prefix

@pytest.mark.parametrize("prefix", ["../evil", "../../evil", "/tmp/athena_evil", "ABSOLUTE", "..\\evil",
                                    "sub/../../evil", "out_link/evil", "%year%/../../evil", "C:/evil"])
def test_filename_prefix_cannot_leave_the_output_folder(srv, prefix, tmp_path):
    if prefix == "ABSOLUTE":
        prefix = str(tmp_path / "evil")
    (srv.root / "input").mkdir(exist_ok=True)
    (srv.root / "input" / "src.png").write_bytes(png())
    if not (srv.output / "out_link").is_symlink():
        (srv.output / "out_link").symlink_to(srv.root)
    before = tree(srv.root, "output")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "src.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}
    r = httpx.post(f"{srv.url}/prompt", json={"prompt": prompt})
    if r.status_code == 200:  # accepted: the job must fail, naming the prefix
        job = wait_job(srv, r.json()["prompt_id"])
        assert job["state"] == "failed", job
        assert "filename_prefix" in job["error"]["message"], job["error"]
    else:
        assert r.status_code == 400 and "filename_prefix" in r.text, r.text
    assert tree(srv.root, "output") == before
    assert not list(tmp_path.iterdir())
    assert not any(p.name.startswith("athena_evil") for p in Path("/tmp").iterdir())
    assert not list(srv.root.parent.glob("evil*"))


# ---------------------------------------------------------------- cross-origin writes

ORIGIN_ROUTES = [  # (path, request kwargs)
    ("/prompt", {"json": {"prompt": BASIC}}),
    ("/api/prompt", {"json": {"prompt": BASIC}}),
    ("/upload/image", {"files": {"image": ("cross.png", png(), "image/png")}}),
    ("/api/v1/jobs", {"json": {"workflow": BASIC}}),
    ("/interrupt", {"json": {}}),
    ("/queue", {"json": {"clear": True}}),
    ("/userdata/cross.json", {"content": b"{}"}),
    ("/settings", {"json": {"Comfy.Evil": True}}),
]


@pytest.mark.parametrize("origin", ["null", "https://evil.example", "http://127.0.0.1.evil.example",
                                    "http://localhost:1", "not an origin"])
@pytest.mark.parametrize("path,kwargs", ORIGIN_ROUTES, ids=[p for p, _ in ORIGIN_ROUTES])
def test_cross_origin_posts_are_refused(srv, origin, path, kwargs):
    before = tree(srv.root)
    jobs = len(httpx.get(f"{srv.url}/api/v1/jobs", params={"limit": 1000}).json())
    r = httpx.post(f"{srv.url}{path}", headers={"Origin": origin}, **kwargs)
    assert r.status_code == 403, (origin, r.status_code, r.text)
    assert "cross-origin" in r.json()["error"]
    assert tree(srv.root) == before
    assert len(httpx.get(f"{srv.url}/api/v1/jobs", params={"limit": 1000}).json()) == jobs


def test_cross_site_fetch_without_origin_is_refused(srv):
    r = httpx.post(f"{srv.url}/interrupt", headers={"Sec-Fetch-Site": "cross-site"}, json={})
    assert r.status_code == 403


@pytest.mark.parametrize("path,kwargs", ORIGIN_ROUTES[2:], ids=[p for p, _ in ORIGIN_ROUTES[2:]])
def test_same_origin_posts_work(srv, path, kwargs):
    for origin in (srv.url, f"http://localhost:{srv.port}"):
        r = httpx.post(f"{srv.url}{path}", headers={"Origin": origin, "Host": origin.split("//")[1]}, **kwargs)
        assert r.status_code in (200, 201), (origin, path, r.status_code, r.text)
    if path == "/api/v1/jobs":
        wait_job(srv, r.json()["id"])


def test_same_origin_prompt_runs(srv):
    r = httpx.post(f"{srv.url}/prompt", headers={"Origin": srv.url}, json={"prompt": BASIC})
    assert r.status_code == 200, r.text
    assert wait_job(srv, r.json()["prompt_id"])["state"] == "succeeded"


def test_foreign_origin_websocket_is_refused(srv):
    for origin in ("https://evil.example", "null"):
        with pytest.raises(InvalidStatus) as e:
            connect(f"ws://127.0.0.1:{srv.port}/ws?clientId=x", origin=origin, open_timeout=10)
        assert e.value.response.status_code == 403
    with connect(f"ws://127.0.0.1:{srv.port}/ws?clientId=x", origin=srv.url, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"


# ---------------------------------------------------------------- bodies and uploads

def test_oversized_body_is_a_413(srv):
    limit = 50 << 20  # ServerConfig.max_body_bytes; `athena serve` has no flag for it

    def chunks() -> Iterator[bytes]:
        block = b" " * (1 << 20)
        for _ in range(51):
            yield block

    try:  # declared: refused before the body is read (the server may close before the client is done sending)
        r = httpx.post(f"{srv.url}/prompt", content=chunks(), headers={"Content-Length": str(51 << 20)})
        assert r.status_code == 413, r.text
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass
    r = httpx.post(f"{srv.url}/prompt", content=chunks(), timeout=60)  # chunked: counted as it streams
    assert r.status_code == 413, r.text
    assert str(limit) in r.json()["error"]
    assert httpx.get(f"{srv.url}/api/v1/health").status_code == 200


def test_decompression_bomb_upload_is_a_413_and_writes_nothing(srv):
    before = tree(srv.root)
    bomb = bomb_png()
    assert len(bomb) < 100_000
    for route in ("/upload/image", "/upload/mask"):
        r = httpx.post(f"{srv.url}{route}", files={"image": ("bomb.png", bomb, "image/png")},
                       data={"original_ref": json.dumps({"filename": "src.png"})})
        assert r.status_code == 413, r.text
    assert tree(srv.root) == before


@pytest.mark.parametrize("data", [b"<?php system($_GET['c']); ?>", b"\x89PNG\r\n\x1a\n truncated", b"",
                                  b"GIF89a", b"%!PS-Adobe-3.0 EPSF-3.0"])
def test_non_image_upload_is_refused(srv, data):
    before = tree(srv.root)
    r = httpx.post(f"{srv.url}/upload/image", files={"image": ("shell.png", data, "image/png")})
    assert r.status_code in (400, 415), r.text
    assert tree(srv.root) == before


# ---------------------------------------------------------------- malicious pickles

@pytest.mark.parametrize("name", ["evil_zip.ckpt", "evil_legacy.ckpt"])
def test_malicious_pickle_checkpoint_is_refused_without_running_code(srv, name):
    marker = srv.root / f"MARKER_{name.split('_')[1].split('.')[0]}"
    prompt = json.loads(json.dumps(BASIC))
    prompt["4"]["inputs"]["ckpt_name"] = name
    r = httpx.post(f"{srv.url}/prompt", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    job = wait_job(srv, r.json()["prompt_id"])
    assert job["state"] == "failed"
    assert "weights_only" in job["error"]["message"] and name in job["error"]["message"], job["error"]
    assert not marker.exists()


# ---------------------------------------------------------------- the bind policy and the token

def test_public_bind_without_token_refuses_to_start(tmp_path, models):
    env = {k: v for k, v in os.environ.items() if k != "ATHENA_TOKEN"}
    s = make_server(tmp_path, models, "--host", "0.0.0.0")
    done = subprocess.run([sys.executable, "-m", "athena.cli", "serve", "--port", str(s.port), *s.args],
                          check=False, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "--token" in done.stderr and "--insecure" in done.stderr, done.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/api/v1/health", timeout=2)


def test_short_token_refuses_to_start(tmp_path, models):
    s = make_server(tmp_path, models, "--host", "0.0.0.0", "--token", "short")
    done = subprocess.run([sys.executable, "-m", "athena.cli", "serve", "--port", str(s.port), *s.args],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "at least 16" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def public(tmp_path_factory, models) -> Iterator[Server]:
    """A server on 0.0.0.0 with a token, access log on (reached through 127.0.0.1)."""
    server = spawn(make_server(tmp_path_factory.mktemp("public"), models, "--host", "0.0.0.0", "--token", TOKEN),
                   token=TOKEN)
    yield server
    server.stop()


@pytest.mark.parametrize("method,path", [("GET", "/api/v1/health"), ("GET", "/object_info"), ("GET", "/queue"),
                                         ("POST", "/prompt"), ("POST", "/api/v1/jobs"), ("GET", "/view?filename=x"),
                                         ("GET", "/userdata?dir="), ("GET", "/docs"), ("GET", "/openapi.json"),
                                         ("GET", "/")])
def test_requests_without_the_right_token_are_401(public, method, path):
    for headers in ({}, {"X-Athena-Token": "wrong" * 8}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Cookie": f"athena_token_{public.port}={TOKEN}"}):
        r = httpx.request(method, f"{public.url}{path}", headers=headers, json={"prompt": BASIC})
        assert r.status_code == 401, (headers, r.status_code)
        assert "token" in r.json()["error"]
    r = httpx.request(method, f"{public.url}{path}{'&' if '?' in path else '?'}token={TOKEN}x")
    assert r.status_code == 401


def test_the_right_token_is_accepted(public):
    for headers in ({"X-Athena-Token": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}):
        assert httpx.get(f"{public.url}/queue", headers=headers).status_code == 200
    r = httpx.get(f"{public.url}/queue?token={TOKEN}")
    assert r.status_code == 200
    assert TOKEN not in r.headers.get("set-cookie", "")  # the cookie holds a derived value
    cookie = r.cookies  # ...which is enough afterwards, as it is for the browser
    assert httpx.get(f"{public.url}/queue", cookies=cookie).status_code == 200
    r = httpx.post(f"{public.url}/prompt", headers={"X-Athena-Token": TOKEN}, json={"prompt": BASIC})
    assert r.status_code == 200, r.text


def test_websocket_needs_the_token(public):
    for query in ("", "&token=wrong-token-0123456789abcdef"):
        with pytest.raises(InvalidStatus) as e:
            connect(f"ws://127.0.0.1:{public.port}/ws?clientId=t{query}", open_timeout=10)
        assert e.value.response.status_code == 403  # uvicorn answers a close-before-accept with 403
    with connect(f"ws://127.0.0.1:{public.port}/ws?clientId=t&token={TOKEN}", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
    with connect(f"ws://127.0.0.1:{public.port}/ws?clientId=t", additional_headers={"X-Athena-Token": TOKEN},
                 open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"


def test_token_never_reaches_the_log(public):
    httpx.get(f"{public.url}/queue?token={TOKEN}").raise_for_status()
    httpx.get(f"{public.url}/queue?a=1&token={TOKEN}&b=2").raise_for_status()
    httpx.get(f"{public.url}/queue?token={TOKEN[:-1]}")  # a wrong one is not logged either
    with connect(f"ws://127.0.0.1:{public.port}/ws?token={TOKEN}", open_timeout=10) as ws:
        ws.recv(timeout=10)
    time.sleep(0.5)  # let the access log lines land
    log = (public.root / "server.log").read_text()
    assert "GET /queue?a=1&b=2" in log, log[-2000:]  # the access log is on, with the token stripped
    assert TOKEN not in log and TOKEN[:-1] not in log
