"""The web UI: the published ComfyUI frontend (PyPI `comfyui-frontend-package`) served at `/`, and the small routes it
needs beside the API: users, settings, user data, extensions, i18n, workflow templates (served from every installed
template package), global subgraphs, the user stylesheet, and ComfyUI's /internal routes (folders, files, logs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from athena.server.comfy import MODEL_FOLDERS, atomic_write
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


async def json_or_none(request: Request) -> tuple[bool, Any]:
    """(True, the body's JSON value), or (False, None) when the body is not JSON."""
    try:
        return True, await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, None


@router.post("/settings")
async def post_settings(request: Request) -> Response:
    ok, body = await json_or_none(request)
    if not ok or not isinstance(body, dict):
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
    ok, value = await json_or_none(request)
    if not ok:
        return JSONResponse({"error": f"the value of setting {key!r} must be JSON"}, status_code=400)
    current = await get_settings(request)
    current[key] = value
    write_json(user_dir(request) / "comfy.settings.json", current)
    return Response(status_code=200)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=1).encode())


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
    if not folder.exists():
        return JSONResponse([])  # nothing saved there yet (ComfyUI answers 404, which its frontend reads as empty)
    if not folder.is_dir():
        return JSONResponse({"error": f"{dir!r} is not a folder"}, status_code=404)
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
    atomic_write(path, await request.body())
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


@router.get("/global_subgraphs")
async def global_subgraphs() -> dict[str, Any]:
    return {}  # subgraph blueprints shipped by custom nodes: id -> {name, info, data}


@router.get("/global_subgraphs/{subgraph_id}")
async def global_subgraph(subgraph_id: str) -> Response:
    return JSONResponse({"error": f"no subgraph {subgraph_id!r}"}, status_code=404)


@router.get("/user.css", include_in_schema=False)
async def user_css(request: Request) -> Response:
    """The frontend links a user stylesheet; serve the user's `user.css` if they wrote one, else an empty one."""
    path = user_dir(request) / "user.css"
    return FileResponse(path, media_type="text/css") if path.is_file() else Response("", media_type="text/css")


# ComfyUI's /internal routes (bare only, never under /api): what its frontend reads for folders, files and logs.
internal = APIRouter(prefix="/internal", include_in_schema=False)


@internal.get("/folder_paths")
async def folder_paths(request: Request) -> dict[str, list[str]]:
    models = request.app.state.athena.folders.models
    return {folder: [str(models / folder)] for folder in MODEL_FOLDERS}


@internal.get("/files/{directory_type}")
async def internal_files(request: Request, directory_type: str) -> Response:
    roots = {"output": request.app.state.athena.folders.output, "input": request.app.state.athena.folders.input,
             "temp": request.app.state.athena.folders.temp}
    if directory_type not in roots:
        return JSONResponse({"error": "directory type is output, input or temp"}, status_code=400)
    root = roots[directory_type]
    files = [p for p in root.iterdir() if p.is_file()] if root.is_dir() else []
    files.sort(key=lambda p: -p.stat().st_mtime)  # newest first
    return JSONResponse([p.name for p in files])


@internal.get("/logs")
async def logs() -> str:
    return ""  # the server log is not kept in memory; see `athena serve`'s output


@internal.get("/logs/raw")
async def logs_raw() -> dict[str, Any]:
    return {"entries": [], "size": {"cols": 80, "rows": 24}}


@internal.patch("/logs/subscribe")
async def logs_subscribe() -> Response:
    return Response(status_code=200)


TEMPLATE_PACKAGES = ("comfyui_workflow_templates_json", "comfyui_workflow_templates_media_image",
                     "comfyui_workflow_templates_media_other", "comfyui_workflow_templates_media_video",
                     "comfyui_workflow_templates_media_api", "comfyui_workflow_templates_core")


def template_dirs() -> list[Path]:
    """The `templates/` folders of the installed workflow-template packages (ComfyUI splits one set over several)."""
    return [d for d in (package_dir(m, "templates") for m in TEMPLATE_PACKAGES) if d is not None]


async def template_file(request: Request, name: str) -> Response:
    """`/templates/NAME` from whichever installed template package holds it."""
    sub, _, base = name.rpartition("/")
    for root in request.app.state.template_dirs:
        path = confined_path(root, sub, base)
        if path.is_file():
            return FileResponse(path)
    return JSONResponse({"error": f"no template file {name!r}"}, status_code=404)


def add_frontend(app: FastAPI, config: Any) -> None:
    app.include_router(router)
    app.include_router(router, prefix="/api")
    app.include_router(internal)
    app.state.template_dirs = template_dirs()
    app.add_api_route("/templates/{name:path}", template_file, methods=["GET"], include_in_schema=False)
    web = package_dir("comfyui_frontend_package", "static")
    if web is not None:
        app.mount("/", StaticFiles(directory=web, html=True), name="frontend")
    else:
        @app.get("/", include_in_schema=False)
        async def no_frontend() -> HTMLResponse:
            return HTMLResponse("<h1>Athena</h1><p>The node editor is the ComfyUI frontend: "
                                "<code>pip install comfyui-frontend-package</code>, then restart. The APIs are at "
                                "<a href='/docs'>/docs</a>.</p>")
