import pytest
import torch
import torchvision

from survival3d.errors import ConfigError, InputError
from survival3d.glsa.backbones import BACKBONES, GLSANet, create_model, pretrained_weights_path
from survival3d.glsa.block import GLSABlock




EXPECTED = {f"resnet{d}" for d in (18, 34, 50, 101, 152)} | {f"vgg{d}{s}" for d in (11, 13, 16, 19) for s in ("", "_bn")}
# channels after the last stage, and the number of stages
LAST = {"resnet18": (512, 4), "resnet34": (512, 4), "resnet50": (2048, 4), "resnet101": (2048, 4), "resnet152": (2048, 4)}


def test_registry_names():
    assert set(BACKBONES.keys()) == EXPECTED | {"baseline_featureact"}  # the FeatureAct notes' CNN (no GLSA block)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_backbone_builds_with_glsa(name):
    # built on the meta device: the full architecture (and its dry run) without allocating or initialising weights
    with torch.device("meta"):
        model = create_model(name, False, 5, "cbam", "learnable_gate", "progressive", input_size=64)
    assert isinstance(model, GLSANet) and isinstance(model.glsa, GLSABlock)
    channels, stages = LAST.get(name, (512, 5))
    assert model.glsa.channels == channels and model.glsa_stage == stages and len(model.after) == 0
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == 5
    with torch.device("meta"):
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("name, stage, channels", [("resnet18", 2, 128), ("vgg11", 3, 256)])
def test_forward_backward_real_weights(name, stage, channels):
    model = create_model(name, False, 3, "featureact", "cross_attn", "drop_path", glsa_stage=stage, input_size=32, num_heads=4)
    assert model.glsa.channels == channels and model.glsa_stage == stage
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.glsa.parameters())
    counts = model.count_parameters()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["glsa_total"] == sum(p.numel() for p in model.glsa.parameters())


def test_same_architecture_as_torchvision():
    model = create_model("resnet34", False, 1000, "none", input_size=32)
    tv = torchvision.models.resnet34()
    assert model.count_parameters()["total"] - model.count_parameters()["glsa_total"] == sum(p.numel() for p in tv.parameters())


def test_narrow_resnet():
    model = create_model("resnet18", False, 7, "cbam", width=8, input_size=32, num_heads=2)
    assert model.glsa.channels == 64
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        create_model("resnet18", True, 7, width=8)
    with pytest.raises(ConfigError, match="only available for ResNets"):
        create_model("vgg11", False, 7, width=8)


def test_pretrained_missing_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = pretrained_weights_path("resnet18")
    assert str(path).startswith(str(tmp_path))
    with pytest.raises(InputError) as e:
        create_model("resnet18", True, 7, input_size=32)
    msg = str(e.value)
    assert str(path) in msg and url in msg and "nothing is downloaded" in msg


def test_pretrained_loads_from_cache_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, _ = pretrained_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), path)
    model = create_model("resnet18", True, 7, "none", input_size=32)
    assert torch.equal(model.before[0][0].weight, ref.conv1.weight)
    assert torch.equal(model.before[3][-1].conv2.weight, ref.layer4[-1].conv2.weight)
    other = tmp_path / "elsewhere.pth"
    torch.save(ref.state_dict(), other)
    path.unlink()
    model = create_model("resnet18", True, 7, "none", input_size=32, weights_path=str(other))
    assert torch.equal(model.before[0][0].weight, ref.conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(InputError, match="do not match"):
        create_model("resnet18", True, 7, "none", input_size=32, weights_path=str(other))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="Did you mean 'resnet50'"):
        create_model("resnet05")
    with pytest.raises(ConfigError, match="glsa_stage"):
        with torch.device("meta"):
            create_model("resnet18", glsa_stage=5, input_size=32)


def test_pretrained_uses_any_cached_weight_set(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    v1 = tvm.ResNet50_Weights.IMAGENET1K_V1  # not the default (V2): a cache holding only V1 must still work
    path = tmp_path / "hub" / "checkpoints" / v1.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    with torch.device("meta"):
        ref = tvm.resnet50()
    ref = ref.to_empty(device="cpu")
    for p in ref.parameters():
        torch.nn.init.normal_(p)
    torch.save(ref.state_dict(), path)
    assert pretrained_weights_path("resnet50")[0] != path
    model = create_model("resnet50", True, 7, "none", input_size=32)
    assert torch.equal(model.before[0][0].weight, ref.conv1.weight)
