"""The UI end to end: headless Chromium (Debian's `chromium`, driven by Playwright) opens the ComfyUI frontend that
`athena serve` hosts, loads the classic SD1.5 text-to-image template with the tiny test checkpoint, queues it with the
Run button, and sees the image in the page. Every request the frontend makes must find its route.

The screenshot is written to pytest's tmp folder and copied to benchmarks/out/ui.png (git-ignored)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from tests.server.conftest import make_server

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[2] / "benchmarks" / "out" / "ui.png"
TEMPLATE_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"  # what the template's CheckpointLoaderSimple names

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium; .ci/run installs it)"),
]


def allowed_miss(path: str) -> bool:
    """A 404 that is not a missing route: a user file the frontend probes for before anyone saved it (ComfyUI
    answers these 404 too), e.g. /api/userdata/comfy.templates.json or the user stylesheet."""
    return path.startswith("/api/userdata/")


def test_ui_runs_the_default_workflow(tmp_path, models):
    # Playwright (the test extra) drives the system chromium; it never downloads a browser of its own.
    from playwright import sync_api

    ui_models = tmp_path / "models"  # the shared models folder stays as other tests expect it
    (ui_models / "checkpoints").mkdir(parents=True)
    (ui_models / "checkpoints" / TEMPLATE_CKPT).symlink_to(models / "checkpoints" / "tiny_sd1.safetensors")
    settings = tmp_path / "data" / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    # A returning user: no first-run template browser over the canvas.
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))

    srv = make_server(tmp_path, ui_models).start()
    failures: list[str] = []
    console_errors: list[str] = []

    def on_response(response) -> None:  # type: ignore[no-untyped-def]
        url = urlparse(response.url)
        if response.url.startswith(srv.url) and response.status >= 400 and not (
                response.status == 404 and allowed_miss(url.path)):
            failures.append(f"{response.status} {response.request.method} {url.path}?{url.query}")

    def on_console(msg) -> None:  # type: ignore[no-untyped-def]
        if msg.type != "error":
            return
        source = msg.location.get("url", "") if msg.location else ""
        if msg.text.startswith("Failed to load resource"):
            if source.startswith(srv.url) and not allowed_miss(urlparse(source).path):
                console_errors.append(f"{msg.text} ({source})")
            return  # resources elsewhere (fonts, telemetry) cannot load offline; not our routes
        console_errors.append(msg.text)

    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("response", on_response)
            page.on("console", on_console)
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
            page.goto(srv.url + "/")
            page.wait_for_function("window.app && window.app.graph && window.app.graph.nodes.length > 0",
                                   timeout=60_000)

            # The classic default text-to-image template, as the template browser loads it; then a 64x64, 2-step
            # run so the tiny model finishes in a moment.
            page.evaluate("""async (checkpoint) => {
                const wf = await (await fetch('/templates/default.json')).json();
                await window.app.loadGraphData(wf);
                const widget = (type, name) => window.app.graph.nodes.find(n => n.type === type)
                    .widgets.find(w => w.name === name);
                widget('EmptyLatentImage', 'width').value = 64;
                widget('EmptyLatentImage', 'height').value = 64;
                widget('KSampler', 'steps').value = 2;
                widget('KSampler', 'control_after_generate').value = 'fixed';
                widget('CheckpointLoaderSimple', 'ckpt_name').value = checkpoint;
            }""", TEMPLATE_CKPT)
            page.get_by_role("button", name="Run", exact=True).first.click()

            image = page.locator("img[src*='/view?'][src*='filename=SD1.5']").first
            image.wait_for(state="visible", timeout=60_000)
            shown_width = image.evaluate("img => img.complete ? img.naturalWidth : 0")  # decoded, not a broken link
            page.evaluate("""() => {  // frame the sampler and the saved image at full scale for the picture
                const canvas = window.app.canvas, node = window.app.graph.nodes.find(n => n.type === 'SaveImage');
                canvas.ds.scale = 1;
                canvas.ds.offset = [canvas.canvas.clientWidth / 2 - node.pos[0] - node.size[0] / 2 + 250,
                                    canvas.canvas.clientHeight / 2 - node.pos[1] - node.size[1] / 2];
                canvas.setDirty(true, true);
            }""")
            page.wait_for_timeout(1000)  # let the canvas redraw before the picture
            shot = tmp_path / "ui.png"
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        srv.stop()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    print(f"UI screenshot: {SCREENSHOT}")
    outputs = sorted((tmp_path / "output").glob("SD1.5*.png"))
    assert outputs, "the job saved no image"
    with Image.open(outputs[0]) as saved:
        assert shown_width == saved.width
    assert not failures, f"requests the server could not answer: {failures}"
    assert not console_errors, f"errors in the frontend's console: {console_errors}"
