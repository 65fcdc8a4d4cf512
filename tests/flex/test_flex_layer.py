import itertools

import pytest
import torch
from torch import nn

from survival3d.errors import ConfigError
from survival3d.flex.layer import FlexLayer, POOL_CHANNEL_MATCH
from survival3d.flex.logits import LOGITS
from survival3d.flex.masking import MASKING
from survival3d.flex.nets import FlexNet, flex_layers, flex_stats, swap_maxpool

COMBOS = list(itertools.product(LOGITS.keys(), MASKING.keys()))
SUPPORTS_3D = [n for n in LOGITS.keys() if 3 in LOGITS.get(n).supported_dims]


def test_registries_hold_every_method_of_the_issue():
    assert set(LOGITS.keys()) == {
        "threshold", "spatial_attention", "spatial_attention_sum", "spatial_attention_mul", "spatial_attention_cmp",
        "spatial_attention_gated", "spatial_attention_weighted_sum", "unet", "transformer_positional",
        "transformer_global", "channelwise_maxpool"}
    assert set(MASKING.keys()) == {"sharp_sigmoid", "hard_sigmoid", "ste", "stochastic"}
    assert set(SUPPORTS_3D) == set(LOGITS.keys())  # unet: per depth slice in 3D


@pytest.mark.parametrize("logits, masking", COMBOS)
def test_output_shape_equals_both_branches_2d(logits, masking):
    layer = FlexLayer(3, 6, kernel_size=3, stride=2, padding=1, spatial_dims=2, logits=logits, masking=masking)
    x = torch.randn(2, 3, 11, 9)
    conv, pool = layer.branches(x)
    y = layer(x)
    assert conv.shape == pool.shape == y.shape == (2, 6, 6, 5)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("logits, masking", list(itertools.product(SUPPORTS_3D, MASKING.keys())))
def test_output_shape_equals_both_branches_3d(logits, masking):
    layer = FlexLayer(2, 4, kernel_size=2, spatial_dims=3, logits=logits, masking=masking)
    x = torch.randn(2, 2, 6, 4, 5)
    conv, pool = layer.branches(x)
    y = layer(x)
    assert conv.shape == pool.shape == y.shape == (2, 4, 3, 2, 2)


def test_unet_is_monai_3d_unet_over_channels_as_depth():
    from monai.networks.nets import UNet

    layer = FlexLayer(3, 5, logits={"name": "unet", "features": [4, 8, 8]}).eval()
    assert isinstance(layer.logits.unet, UNet) and layer.logits.unet.dimensions == 3
    conv, pool = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7)
    # reference: the MONAI U-Net on the stacked (b, 2, depth=c, h, w) volume, zero-padded to a multiple of 4
    volume = torch.nn.functional.pad(torch.stack([conv, pool], 1), (0, 1, 0, 2, 0, 3))
    want = layer.logits.unet(volume)[:, 0, :5, :6, :7]
    torch.testing.assert_close(layer.logits(conv, pool), want)


def test_unet_in_3d_runs_the_3d_unet_on_every_depth_slice():
    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    l3 = FlexLayer(4, spatial_dims=3, logits="unet").logits.eval()
    l2 = FlexLayer(4, spatial_dims=2, logits="unet").logits.eval()
    l2.load_state_dict(l3.state_dict())
    conv, pool = torch.randn(2, 4, 3, 5, 6), torch.randn(2, 4, 3, 5, 6)
    got = l3(conv, pool)
    assert got.shape == conv.shape
    for k in range(conv.shape[2]):
        torch.testing.assert_close(got[:, :, k], l2(conv[:, :, k], pool[:, :, k]))


@pytest.mark.parametrize("logits, masking", COMBOS)
def test_gradients_reach_logits_parameters(logits, masking):
    layer = FlexLayer(4, 4, kernel_size=2, logits=logits, masking=masking).train()
    x = torch.randn(4, 4, 8, 8, requires_grad=True)
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    params = dict(layer.logits.named_parameters())
    assert layer.conv.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    if LOGITS.get(logits).joint:
        # channelwise_maxpool: no parameters and a hard step, so nothing to reach by design
        assert not params
        return
    assert params
    for name, p in params.items():
        assert p.grad is not None, f"{logits}/{masking}: no gradient for {name}"
        assert torch.isfinite(p.grad).all()
    # every parameter tensor receives a non-zero gradient (for sharp_sigmoid k = 50 only logits near 0 do)
    dead = [n for n, p in params.items() if p.grad.abs().sum() == 0]
    assert not dead, f"{logits}/{masking}: zero gradient for {dead}"


def test_saturated_hard_sigmoid_stops_gradient_by_design():
    layer = FlexLayer(2, logits={"name": "threshold", "init": -100.0}, masking="hard_sigmoid")
    x = torch.rand(2, 2, 4, 4)
    layer(x).sum().backward()
    assert layer.logits.tau.grad.abs().sum() == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mask_ones_is_conv_zeros_is_pool_exactly(spatial_dims):
    layer = FlexLayer(3, 5, spatial_dims=spatial_dims, pool_channels="conv1x1")
    x = torch.randn(2, 3, *([6] * spatial_dims))
    conv, pool = layer.branches(x)
    assert torch.equal(layer.mix(conv, pool, torch.ones_like(conv)), conv)
    assert torch.equal(layer.mix(conv, pool, torch.zeros_like(conv)), pool)


@pytest.mark.parametrize("masking", ["sharp_sigmoid", "hard_sigmoid", "ste", "stochastic"])
def test_forward_with_saturated_threshold_selects_one_branch_exactly(masking):
    x = torch.randn(2, 4, 8, 8)
    for init, branch in ((-1e4, 0), (1e4, 1)):
        layer = FlexLayer(4, logits={"name": "threshold", "init": init}, masking=masking)
        assert torch.equal(layer(x), layer.branches(x)[branch])
        stats = layer.stats()
        assert stats["conv_ratio"] == (1.0 if branch == 0 else 0.0)
        assert stats["binariness"] == 1.0 and stats["homogeneity"] == 1.0


def test_channelwise_maxpool_is_elementwise_max():
    layer = FlexLayer(3, 3, kernel_size=3, stride=1, padding=1, logits="channelwise_maxpool", masking="ste")
    x = torch.randn(2, 3, 7, 7)
    conv, pool = layer.branches(x)
    assert torch.equal(layer(x), torch.maximum(conv, pool))
    assert layer.stats()["conv_ratio"] == pytest.approx((conv >= pool).float().mean().item())


def test_stats_recorded_as_tensors_and_match_mask():
    layer = FlexLayer(4, logits="spatial_attention", masking="sharp_sigmoid").eval()
    xs = [torch.randn(3, 4, 8, 8) for _ in range(3)]
    expected = []
    for x in xs:
        layer(x)
        assert isinstance(layer.last_stats, torch.Tensor) and not layer.last_stats.requires_grad
        with torch.no_grad():
            m = layer.mask(*layer.branches(x))
        hard = (m >= 0.5).float()
        expected.append([hard.mean(), (2 * m - 1).abs().mean(), (2 * hard.mean(1) - 1).abs().mean()])
    stats = layer.stats()
    torch.testing.assert_close(torch.tensor(list(stats.values())), torch.tensor(expected).mean(0))
    assert all(0 <= v <= 1 for v in stats.values())
    assert all(v != v for v in layer.stats().values())  # reset: NaN until the next forward


def test_pool_channel_matching():
    x = torch.randn(2, 3, 8, 8)
    assert set(POOL_CHANNEL_MATCH) == {"auto", "conv1x1", "repeat"}
    rep = FlexLayer(3, 6, pool_channels="repeat")
    _, pool = rep.branches(x)
    torch.testing.assert_close(pool, nn.functional.max_pool2d(x, 2).repeat_interleave(2, dim=1))
    assert isinstance(FlexLayer(3, 3).match, nn.Identity)
    assert isinstance(FlexLayer(3, 6).match, nn.Conv2d)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"padding": 2, "kernel_size": 2}, ValueError, r"padding must be in \[0, kernel_size // 2\]"),
        ({"pool_channels": "repeet"}, ValueError, "Did you mean 'repeat'"),
        ({"pool_channels": "repeat", "out_channels": 5}, ValueError, "multiple of in_channels"),
        ({"spatial_dims": 1}, ValueError, "spatial_dims must be 2 or 3"),
        ({"kernel_size": 0}, ValueError, "must be >= 1"),
        ({"logits": "treshold"}, ConfigError, "Did you mean 'threshold'"),
        ({"masking": {"name": "ste", "k": -1}}, ValueError, "k must be > 0"),
        ({"logits": {"name": "spatial_attention", "n_blocks": 4}}, ValueError, "1 to 3 blocks"),
        ({"logits": {"name": "transformer_global", "dim": 30, "heads": 4}}, ValueError, "divisible by heads"),
        ({"logits": {"name": "unet", "features": [8]}}, ValueError, ">= 2 positive widths"),
    ],
)
def test_ill_arguments(kwargs, error, pattern):
    kwargs = {"out_channels": 4, **kwargs}
    with pytest.raises(error, match=pattern):
        FlexLayer(2 if kwargs.get("pool_channels") == "repeat" else 4, **kwargs)


def test_transformers_handle_sizes_not_divisible_by_patch():
    for name in ("transformer_positional", "transformer_global"):
        layer = FlexLayer(4, logits={"name": name, "patch": 2, "dim": 16, "heads": 2})
        assert layer(torch.randn(2, 4, 10, 14)).shape == (2, 4, 5, 7)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flexnet_shapes_and_stats(spatial_dims):
    net = FlexNet(2, 5, channels=(4, 8), spatial_dims=spatial_dims, logits="spatial_attention_weighted_sum",
                  masking="ste")
    assert net(torch.rand(3, 2, *([8] * spatial_dims))).shape == (3, 5)
    stats = flex_stats(net)
    assert list(stats) == [name for name, _ in flex_layers(net)] and len(stats) == 2


def test_flexnet_bad_arguments():
    with pytest.raises(ValueError, match="channels must be a non-empty list"):
        FlexNet(1, 10, channels=())
    with pytest.raises(ValueError, match="num_classes >= 2"):
        FlexNet(1, 1)


def _torchvision(arch: str) -> nn.Module:
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    if arch == "vgg11_features":  # VGG-11's feature extractor, where all 5 max-pools live (skips the 120M-param head)
        return make_layers(cfgs["A"], batch_norm=False)
    return torchvision.models.get_model(arch, weights=None, num_classes=7)


@pytest.mark.parametrize("arch, n_pools", [("resnet18", 1), ("vgg11_features", 5)])
def test_swap_maxpool_in_torchvision(arch, n_pools):
    net = _torchvision(arch)
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    before = net(x).shape
    swapped = swap_maxpool(net, x, logits="threshold", masking="ste")
    assert len(swapped) == n_pools
    layers = flex_layers(net)
    assert [n for n, _ in layers] == swapped
    left = [n for n, m in net.named_modules() if isinstance(m, nn.MaxPool2d)]
    assert left == [f"{n}.pool" for n in swapped]  # only the FlexLayers' own pooling branches remain
    assert net(x).shape == before
    first = layers[0][1]
    ref = {"resnet18": (3, 2, 1), "vgg11_features": (2, 2, 0)}[arch]
    assert (first.conv.kernel_size[0], first.conv.stride[0], first.conv.padding[0]) == ref


def test_swap_maxpool_without_pooling():
    with pytest.raises(ValueError, match="no MaxPool2d"):
        swap_maxpool(nn.Sequential(nn.Conv2d(1, 1, 1)), torch.rand(1, 1, 4, 4))
