from pathlib import Path

import pytest

from survival3d.flex.config import load_flex_config
from survival3d.flex.logits import LOGITS
from survival3d.flex.masking import MASKING

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "flex").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_name_registered_parts(path):
    cfg = load_flex_config(path)
    names = [s if isinstance(s, str) else s["name"] for s in cfg.grid.logits]
    assert all(n in LOGITS for n in names)
    assert all((s if isinstance(s, str) else s["name"]) in MASKING for s in cfg.grid.masking)


def test_digits_plan_covers_every_logits_method():
    cfg = load_flex_config("flex/digits.yaml")
    names = {s if isinstance(s, str) else s["name"] for s in cfg.grid.logits}
    assert names == set(LOGITS.keys())
    assert cfg.data.name == "digits"


def test_masking_plan_tests_the_sharpness_suspicion():
    cfg = load_flex_config("flex/masking.yaml")
    specs = [{"name": s} if isinstance(s, str) else dict(s) for s in cfg.grid.masking]
    assert {s["name"] for s in specs} == set(MASKING.keys())
    ks = {s.get("k") for s in specs if s["name"] == "sharp_sigmoid"}
    assert 50 in ks and any(k < 50 for k in ks)
    assert len(cfg.grid.seeds) >= 2


def test_build_network_torchvision_arch_swaps_maxpool():
    import torch

    from survival3d.errors import ConfigError
    from survival3d.flex.data import load_flex_data
    from survival3d.flex.nets import flex_layers
    from survival3d.flex.train import build_network

    cfg = load_flex_config(overrides=["model.arch=resnet18", "model.masking.name=ste"])
    data = load_flex_data(cfg.data)
    net = build_network(cfg.model, data).eval()
    assert [n for n, _ in flex_layers(net)] == ["1.maxpool"]
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # grey digits repeated to 3 channels inside
    with pytest.raises(ConfigError, match="neither 'flexnet' nor a torchvision classifier"):
        build_network(load_flex_config(overrides=["model.arch=resnet_18"]).model, data)


def test_image_folder_dataset_split_and_errors(tmp_path):
    import numpy as np
    from PIL import Image

    from survival3d.errors import InputError
    from survival3d.flex.data import load_flex_data

    rng = np.random.default_rng()
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    cfg = load_flex_config(overrides=["data.name=image_folder", f"data.root={tmp_path}", "data.image_size=8",
                                      "data.val_frac=0.4"])
    data = load_flex_data(cfg.data)
    assert (len(data.train), len(data.val), data.num_classes, data.in_channels) == (6, 4, 2, 3)
    x, y = data.val[0]
    assert x.shape == (3, 8, 8) and 0 <= x.min() and x.max() <= 1 and y in (0, 1)
    with pytest.raises(InputError, match=r"\[data.image_size\]"):
        load_flex_data(load_flex_config(overrides=["data.name=image_folder", f"data.root={tmp_path}"]).data)
    with pytest.raises(InputError, match="image folder not found"):
        load_flex_data(load_flex_config(overrides=["data.name=image_folder", f"data.root={tmp_path}/nope",
                                                   "data.image_size=8"]).data)
