"""The web UI: the published ComfyUI frontend (PyPI `comfyui-frontend-package`) served at `/`, and the small routes it
needs beside the API (users, settings, user data, extensions, i18n, workflow templates)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from athena.server.security import RequestRefused, confined_path

router = APIRouter()


def package_dir(module: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / sub
    return path if path.is_dir() else None


def user_dir(request: Request) -> Path:
    path: Path = request.app.state.athena.config.user_dir / "default"
    path.mkdir(parents=True, exist_ok=True)
    return path


@router.get("/users")
async def users() -> dict[str, Any]:
    return {"storage": "server", "migrated": True}


@router.get("/settings")
async def get_settings(request: Request) -> dict[str, Any]:
    path = user_dir(request) / "comfy.settings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@router.post("/settings")
async def post_settings(request: Request) -> Response:
    body = await request.json()
    if not isinstance(body, dict):
        return JSONResponse({"error": "settings are a JSON object"}, status_code=400)
    current = await get_settings(request)
    current.update(body)
    write_json(user_dir(request) / "comfy.settings.json", current)
    return Response(status_code=200)


@router.get("/settings/{key}")
async def get_setting(request: Request, key: str) -> Any:
    return (await get_settings(request)).get(key)


@router.post("/settings/{key}")
async def post_setting(request: Request, key: str) -> Response:
    current = await get_settings(request)
    current[key] = await request.json()
    write_json(user_dir(request) / "comfy.settings.json", current)
    return Response(status_code=200)


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


def user_file(request: Request, name: str) -> Path:
    sub, _, base = name.replace("%2F", "/").rpartition("/")
    return confined_path(user_dir(request), sub, base)


@router.get("/userdata")
async def list_userdata(request: Request, dir: str = "", recurse: bool = False, split: bool = False,
                        full_info: bool = False) -> Response:
    root = user_dir(request)
    try:
        folder = confined_path(root, "", dir) if dir else root
    except RequestRefused as e:
        return JSONResponse({"error": str(e)}, status_code=e.status)
    if not folder.is_dir():
        return JSONResponse({"error": f"no folder {dir!r}"}, status_code=404)
    files = sorted(p for p in (folder.rglob("*") if recurse else folder.iterdir()) if p.is_file())
    rel = [p.relative_to(folder).as_posix() for p in files]
    if full_info:
        return JSONResponse([{"path": r, "size": p.stat().st_size, "modified": p.stat().st_mtime}
                             for r, p in zip(rel, files, strict=True)])
    return JSONResponse([[r, *r.split("/")] for r in rel] if split else rel)


@router.get("/v2/userdata")
async def list_userdata_v2(request: Request, path: str = "") -> Response:
    root = user_dir(request)
    folder = confined_path(root, "", path) if path else root
    if not folder.is_dir():
        return JSONResponse({"error": f"no folder {path!r}"}, status_code=404)
    return JSONResponse([{"name": p.name, "path": p.relative_to(root).as_posix(),
                          "type": "directory" if p.is_dir() else "file",
                          **({"size": p.stat().st_size, "modified": p.stat().st_mtime} if p.is_file() else {})}
                         for p in sorted(folder.iterdir())])


@router.get("/userdata/{name:path}")
async def get_userdata(request: Request, name: str) -> Response:
    path = user_file(request, name)
    return FileResponse(path) if path.is_file() else JSONResponse({"error": f"no file {name!r}"}, status_code=404)


@router.post("/userdata/{name:path}")
async def post_userdata(request: Request, name: str, overwrite: bool = True, full_info: bool = False) -> Response:
    if "/move/" in name:
        source, _, dest = name.partition("/move/")
        src, dst = user_file(request, source), user_file(request, dest)
        if not src.is_file():
            return JSONResponse({"error": f"no file {source!r}"}, status_code=404)
        if dst.exists() and not overwrite:
            return JSONResponse({"error": f"{dest!r} exists"}, status_code=409)
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dst)
        return JSONResponse(dest)
    path = user_file(request, name)
    if path.exists() and not overwrite:
        return JSONResponse({"error": f"{name!r} exists"}, status_code=409)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(await request.body())
    tmp.replace(path)
    rel = path.relative_to(user_dir(request)).as_posix()
    return JSONResponse({"path": rel, "size": path.stat().st_size, "modified": path.stat().st_mtime}
                        if full_info else rel)


@router.delete("/userdata/{name:path}")
async def delete_userdata(request: Request, name: str) -> Response:
    path = user_file(request, name)
    if not path.is_file():
        return JSONResponse({"error": f"no file {name!r}"}, status_code=404)
    path.unlink()
    return Response(status_code=204)


@router.get("/extensions")
async def extensions() -> list[str]:
    return []  # Athena loads no frontend extensions


@router.get("/i18n")
async def i18n() -> dict[str, Any]:
    return {}


@router.get("/workflow_templates")
async def workflow_templates() -> dict[str, Any]:
    return {}  # custom-node templates; the core templates are served under /templates


def add_frontend(app: FastAPI, config: Any) -> None:
    app.include_router(router)
    app.include_router(router, prefix="/api")
    for module in ("comfyui_workflow_templates_json", "comfyui_workflow_templates_media_other",
                   "comfyui_workflow_templates_media_image"):
        templates = package_dir(module, "templates")
        if templates is not None:
            app.mount("/templates", StaticFiles(directory=templates), name="templates")
            break
    web = package_dir("comfyui_frontend_package", "static")
    if web is not None:
        app.mount("/", StaticFiles(directory=web, html=True), name="frontend")
    else:
        @app.get("/", include_in_schema=False)
        async def no_frontend() -> HTMLResponse:
            return HTMLResponse("<h1>Athena</h1><p>The node editor is the ComfyUI frontend: "
                                "<code>pip install comfyui-frontend-package</code>, then restart. The APIs are at "
                                "<a href='/docs'>/docs</a>.</p>")
