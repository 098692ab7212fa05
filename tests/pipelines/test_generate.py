"""Pipelines on a tiny random SD1.x file: inpainting keeps what the mask keeps, the hires fix, batch seeds,
cancellation, previews, and the PNG metadata round trip through `athena generate`."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

import athena
from athena.checkpoints.build import random_checkpoint
from athena.cli import main
from athena.diffusion.progress import CancelToken
from athena.errors import Cancelled, ConfigError
from athena.media.images import to_images, to_tensor
from athena.media.png import read_parameters, read_request
from athena.models.unet import TINY_SD1
from athena.models.vae import TINY_VAE
from athena.diffusion.schedules import SCHEDULERS
from athena.pipelines.generate import GenerateRequest, Hires, generate_pixels
from athena.pipelines.sample import model_sampling, noise_for

SIZE = 32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors", "sd1", TINY_SD1, TINY_VAE,
                             {"clip_l": (32, 2)}, dtype=torch.float32)


@pytest.fixture(scope="module")
def pipe(model):
    return athena.load(model)


def request(**kw):
    return GenerateRequest("a cat", **{"steps": 4, "width": SIZE, "height": SIZE, "seed": 1, **kw})


def test_batch_noise_is_one_draw_from_the_seed(pipe):
    both = generate_pixels(pipe, request(batch=2))
    torch.testing.assert_close(generate_pixels(pipe, request(batch=2)), both)  # deterministic
    assert not torch.allclose(both[0], both[1])  # one draw of shape (2, ...), so the two images differ
    # a (2, C, h, w) draw fills sample 0 first, so image 0 of a batch is the image a batch of one gives (as in
    # ComfyUI and diffusers)
    one = generate_pixels(pipe, request(batch=1))
    torch.testing.assert_close(one[0], both[0])
    assert not torch.allclose(generate_pixels(pipe, request(seed=2)), one)


def test_inpainting_keeps_pixels_outside_the_mask(pipe, tmp_path):
    init = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    to_images(init)[0].save(tmp_path / "init.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2:] = 255  # repaint the right half
    from PIL import Image
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = generate_pixels(pipe, request(init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png")))
    pixels = to_tensor(Image.open(tmp_path / "init.png"))
    torch.testing.assert_close(out[..., :SIZE // 2], pixels[..., :SIZE // 2], atol=1e-6, rtol=0)  # kept exactly
    assert (out[..., SIZE // 2:] - pixels[..., SIZE // 2:]).abs().mean() > 0.05  # repainted


def test_outpainting_grows_the_canvas(pipe, tmp_path):
    to_images(torch.zeros(1, 3, SIZE, SIZE))[0].save(tmp_path / "init.png")
    out = generate_pixels(pipe, request(init_image=str(tmp_path / "init.png"), outpaint=(8, 0, 16, 8),
                                        width=None, height=None))
    assert out.shape == (1, 3, SIZE + 8, SIZE + 24)


@pytest.mark.parametrize("upscale", ["latent", "pixel"])
def test_hires_fix_doubles_the_size_and_reports_both_passes(pipe, upscale):
    stages = []
    out = generate_pixels(pipe, request(hires=Hires(2.0, 0.5, 3, upscale)), progress=lambda p: stages.append((p.stage, p.step, p.total)))
    assert out.shape == (1, 3, 2 * SIZE, 2 * SIZE)
    assert [s for s in stages if s[0] == "base"] == [("base", i, 4) for i in range(1, 5)]
    assert [s for s in stages if s[0] == "hires"] == [("hires", i, 3) for i in range(1, 4)]


@pytest.mark.parametrize("scale,size", [(2.0, 2 * SIZE), (1.5, 48), (1.25, 40)])
def test_hires_latent_pass_starts_from_the_upscaled_first_pass(pipe, scale, size):
    """The second pass is img2img from the first pass's latent, upscaled (nearest-exact) to int(size * scale)
    pixels on the latent grid, and noised with the seed's noise to its first sigma."""
    seen = []
    out = generate_pixels(pipe, request(hires=Hires(scale, 0.5, 3, "latent")), progress=seen.append)
    assert out.shape == (1, 3, size, size)
    base = [p.sample for p in seen if p.stage == "base"]
    first = next(p.sample for p in seen if p.stage == "hires")
    f = pipe.vae.cfg.downscale
    up = torch.nn.functional.interpolate(base[-1].x0, size=(size // f, size // f), mode="nearest-exact")
    torch.testing.assert_close(first.x, up + first.sigma * noise_for(tuple(up.shape), 1), atol=1e-4, rtol=1e-4)


def test_cancel_mid_run_stops_at_the_next_step(pipe):
    token, seen = CancelToken(), []

    def progress(p):
        seen.append(p.step)
        if p.step == 2:
            token.cancel()
    with pytest.raises(Cancelled):
        generate_pixels(pipe, request(steps=10), progress=progress, cancel=token)
    assert seen == [1, 2]


def test_preview_follows_the_decoded_image(pipe):
    from athena.pipelines.generate import decode

    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))  # not one the map was fitted on
    img = np.asarray(pipe.preview(latent), dtype=np.float32) / 127.5 - 1
    ref = torch.nn.functional.avg_pool2d(decode(pipe, latent), 2)[0].permute(1, 2, 0).numpy()
    assert img.shape == ref.shape == (16, 16, 3)
    assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.3  # a linear map of a random VAE: ~0.42; unrelated: ~0


def test_each_progress_report_can_preview_its_step(pipe):
    seen = []
    generate_pixels(pipe, request(steps=3), progress=seen.append)
    assert len(seen) == 3
    for p in seen:
        img = p.preview()
        assert img.size == (SIZE // pipe.vae.cfg.downscale,) * 2
        assert np.array_equal(np.asarray(img), np.asarray(pipe.preview(p.sample.x0)))
    assert not np.array_equal(np.asarray(seen[0].preview()), np.asarray(seen[-1].preview()))  # it follows the steps


def test_img2img_strength_starts_part_way(pipe, tmp_path):
    to_images(torch.zeros(1, 3, SIZE, SIZE))[0].save(tmp_path / "init.png")
    steps = []
    generate_pixels(pipe, request(init_image=str(tmp_path / "init.png"), strength=0.5, steps=6),
                    progress=lambda p: steps.append(float(p.sample.sigma)))
    full = SCHEDULERS["normal"](model_sampling(pipe.unet), 12)  # ComfyUI: int(6 / 0.5) steps, the last 6 kept
    assert steps == pytest.approx(full[-7:-1].tolist(), rel=1e-6) and steps[0] < full[0] / 2


@pytest.mark.parametrize("field,value,fix", [("sampler", "eulr", "choose one of"), ("width", 100, "multiple of 8"),
                                             ("steps", 0, "at least 1"), ("strength", 1.5, "outside (0, 1]"),
                                             ("scheduler", "fast", "choose one of")])
def test_bad_requests_name_the_problem(field, value, fix):
    with pytest.raises(ConfigError, match=fix.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        GenerateRequest("x", **{field: value})


def test_request_json_round_trip():
    req = GenerateRequest("x", hires=Hires(1.5), init_image="a.png", outpaint=(1, 2, 3, 4))
    assert GenerateRequest.from_dict(req.to_dict()) == req
    with pytest.raises(ConfigError, match="unknown request field"):
        GenerateRequest.from_dict({"prompt": "x", "cfg_scale": 3})
    assert replace(req, seed=3).seed == 3


def test_cli_writes_pngs_with_metadata_and_replays_them(model, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["generate", "a fox", "--model", str(model), "--steps", "3", "--width", "32", "--height", "32",
                 "--seed", "5", "--sampler", "dpmpp_2m", "--scheduler", "karras", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    params = read_parameters(out)
    assert params.startswith("a fox\n") and "Steps: 3" in params and "Seed: 5" in params and "DPM++ 2M Karras" in params
    assert read_request(out)["request"]["sampler"] == "dpmpp_2m"
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(out)),
                          np.asarray(__import__("PIL.Image").Image.open(again)))


@pytest.mark.parametrize("args,message", [
    (["--sampler", "nope"], "unknown sampler 'nope'; choose one of: euler"),
    (["--width", "30"], "width=30 is not a positive multiple of 8"),
    (["--steps", "0"], "use at least 1 step"),
    (["--strength", "0"], "outside (0, 1]"),
    (["--model", "missing-model"], "model 'missing-model' not found"),
    (["--device", "cuda:99"], "device 'cuda:99'"),
    (["--device", "gpu"], "device 'gpu' is not a device name; use cpu, cuda or cuda:N"),
])
def test_cli_bad_input_is_one_line_without_traceback(model, tmp_path, capsys, args, message):
    base = ["generate", "x", "--models-dir", str(tmp_path), "--model", str(model)]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_shows_progress_and_ctrl_c_stops_cleanly(model, tmp_path):
    """A real Ctrl-C (SIGINT) to `athena generate` mid-sampling: the progress line was there (steps, it/s, ETA), the
    run stops at the next step with exit code 130 and one line, and no file is written."""
    out = tmp_path / "never.png"
    cmd = [sys.executable, "-m", "athena.cli", "generate", "a fox", "--model", str(model), "--steps", "100000",
           "--width", "32", "--height", "32", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + 120  # a generous wait for the first steps, not a timing assertion
    while b"it/s" not in err and proc.poll() is None and time.monotonic() < deadline:
        err += proc.stderr.read() or b""
        time.sleep(0.05)
    assert b"it/s" in err and b"ETA" in err, err.decode(errors="replace")
    proc.send_signal(signal.SIGINT)
    rest, tail = proc.communicate(timeout=60)
    text = (err + tail).decode(errors="replace")
    assert proc.returncode == 130, text
    assert "cancelled: stopped at the next step, nothing written" in text and "Traceback" not in text
    assert not out.exists() and rest == b""
