import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from athena.errors import ConfigError
from athena.training.data import (
    COLORS,
    ITEMS,
    FashionColors,
    FashionMNIST,
    ImageFolder,
    fashion_mnist,
)

GRAMMAR = re.compile(r"a ({c}) ({i}) on a ({c}) background".format(c="|".join(COLORS), i="|".join(ITEMS)))


def check_captions(data: FashionColors) -> None:
    for i in range(len(data)):
        m = GRAMMAR.fullmatch(data.caption(i))
        assert m, data.caption(i)
        fg, item, bg = m.groups()
        assert fg != bg and item == ITEMS[int(data.labels[i])]


def test_captions_follow_the_grammar_on_the_real_set(real_fashion_dir):
    train = FashionColors("train", real_fashion_dir)
    test = FashionColors("test", real_fashion_dir)
    assert (len(train), len(test)) == (60_000, 10_000)
    check_captions(train)
    check_captions(test)
    # every colour appears as foreground and as background, and every item
    assert set(train.fg.tolist()) == set(train.bg.tolist()) == set(range(12))
    assert set(train.labels.tolist()) == set(range(10))


def test_images_match_their_captions(fashion_dir):
    data = FashionColors("train", fashion_dir)
    check_captions(data)
    b = data.batch(range(16))
    assert b.images.shape == (16, 3, 64, 64) and b.images.min() >= -1 and b.images.max() <= 1
    rgb = ((b.images + 1) * 127.5).round()
    for j in range(16):
        fg, bg = (torch.tensor(COLORS[data.caption(j).split()[k]], dtype=torch.float32) for k in (1, -2))
        assert torch.equal(rgb[j, :, 0, 0], bg)  # the border is the plain background
        # the darkest-to-brightest item pixels run from the background towards the foreground colour
        diff = (rgb[j] - bg[:, None, None]).abs().sum(0)
        peak = rgb[j][:, diff.flatten().argmax() // 64, diff.flatten().argmax() % 64]
        assert (peak - fg).abs().max() < (bg - fg).abs().max() * 0.4


def test_set_is_deterministic_by_seed(fashion_dir):
    a, b = FashionColors("train", fashion_dir, seed=3), FashionColors("train", fashion_dir, seed=3)
    assert torch.equal(a.batch([5, 1, 7]).images, b.batch([5, 1, 7]).images)
    assert torch.equal(a.batch([5]).images[0], a.batch([0, 5]).images[1])  # an item renders the same in any batch
    c = FashionColors("train", fashion_dir, seed=4)
    assert [a.caption(i) for i in range(20)] != [c.caption(i) for i in range(20)]
    test = FashionColors("test", fashion_dir, seed=3)
    assert torch.equal(test.items, fashion_mnist("test", fashion_dir)[0])  # the test split is the test items


def test_fashion_mnist_pads_to_32(fashion_dir):
    b = FashionMNIST("train", fashion_dir).batch([0, 1])
    assert b.images.shape == (2, 1, 32, 32) and b.labels is not None
    assert torch.all(b.images[..., :2, :] == -1)


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        fashion_mnist("train", tmp_path)


def test_image_folder_reads_jsonl_and_sidecar_captions(tmp_path):
    jsonl = tmp_path / "hf"
    jsonl.mkdir()
    Image.new("RGB", (80, 40), (255, 0, 0)).save(jsonl / "a.png")
    (jsonl / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a red thing"}) + "\n")
    b = ImageFolder(jsonl, size=32).batch([0])
    assert b.captions == ["a red thing"] and b.images.shape == (1, 3, 32, 32)
    assert np.allclose(b.images[0, :, 16, 16].numpy(), [1, -1, -1], atol=0.02)

    kohya = tmp_path / "kohya"
    kohya.mkdir()
    Image.new("RGB", (32, 32)).save(kohya / "x.jpg")
    (kohya / "x.txt").write_text("a dark square\n")
    assert ImageFolder(kohya, size=16).batch([0]).captions == ["a dark square"]

    (jsonl / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(ConfigError, match="missing images"):
        ImageFolder(jsonl)
