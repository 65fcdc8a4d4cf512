"""Lung maskers: classical on a phantom with known lungs and on the real chest CTs; lungmask with random weights."""

import numpy as np
import pytest
import torch
from conftest import make_chest_phantom

from survival3d.data.lung_masking import (
    LEFT,
    MASKERS,
    RIGHT,
    ClassicalLungMasker,
    LungmaskMasker,
    build_masker,
    lung_volumes,
    resolve_masker_spec,
)
from survival3d.data.preprocess import PreprocessSettings, preprocess_volume
from survival3d.data.readers import CTVolume, read_ct
from survival3d.errors import ConfigError, InputError


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_classical_masker_on_phantom(chest_phantom):
    arr, affine, truth = chest_phantom
    labels = ClassicalLungMasker()(arr, affine)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, RIGHT, LEFT}
    assert _dice(labels == RIGHT, truth["right"]) > 0.97  # right = towards +x (RAS)
    assert _dice(labels == LEFT, truth["left"]) > 0.97
    assert (labels[truth["trachea"]] > 0).mean() < 0.05  # trachea excluded
    assert (labels[truth["vessels"]] > 0).all()  # enclosed vessels filled
    outside = np.zeros_like(labels, dtype=bool)
    outside[:, :2] = True
    assert not labels[outside].any()  # outside air never lung


def test_classical_masker_side_follows_affine(rng):
    arr, affine, truth = make_chest_phantom(rng)
    flipped = affine.copy()
    flipped[0, 0] *= -1  # now +i points to patient left: labels must swap
    labels = ClassicalLungMasker()(arr, flipped)
    assert _dice(labels == LEFT, truth["right"]) > 0.97


@pytest.mark.parametrize("name", ["lung1", "lung2"])
def test_real_ct_two_lungs_plausible_volume(ct_samples, name):
    res = preprocess_volume(read_ct(ct_samples[name]), PreprocessSettings(masker={"name": "classical"}))
    qc = res.qc
    assert 2.0 <= qc["lung_volume_l"] <= 7.0
    assert qc["right_lung_volume_l"] > 0.8 and qc["left_lung_volume_l"] > 0.8
    assert qc["lung_components"] <= 4
    # right lung centroid lies towards +x (RAS) of the left one
    ijk = [np.argwhere(res.lung_mask == lab).mean(axis=0) for lab in (RIGHT, LEFT)]
    x = [(res.affine[:3, :3] @ c + res.affine[:3, 3])[0] for c in ijk]
    assert x[0] > x[1]
    # the lungs hold air-like HU, the mask excludes most dense tissue
    lung_hu = res.image[res.lung_mask > 0]
    assert np.median(lung_hu) < -700


def test_masker_registry_and_arguments():
    assert set(MASKERS.keys()) == {"classical", "lungmask"}
    with pytest.raises(ValueError, match="core_radius_mm"):
        ClassicalLungMasker(core_radius_mm=0)
    with pytest.raises(ValueError, match="max_gas_fraction"):
        ClassicalLungMasker(max_gas_fraction=1.5)
    with pytest.raises(TypeError):
        ClassicalLungMasker(min_second_fraction=0.15)  # the "keep two components" rule is gone
    with pytest.raises(ConfigError, match="Did you mean 'classical'"):
        resolve_masker_spec("clasical")


def _random_lungmask_weights(path, n_classes=3, favour=1):
    """A randomly initialised lungmask U-Net state dict (what LMInferer(modelpath=...) loads); the last layer's
    bias favours class ``favour`` so the random net predicts a non-empty mask."""
    from lungmask.resunet import UNet

    net = UNet(n_classes=n_classes, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    sd = net.state_dict()
    sd["last.bias"] = torch.zeros(n_classes)
    sd["last.bias"][favour] = 50.0
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def lungmask_weights(tmp_path_factory):
    return _random_lungmask_weights(tmp_path_factory.mktemp("lm") / "unet_random.pth")


def test_lungmask_masker_with_random_weights(lungmask_weights, rng):
    arr, affine, _ = make_chest_phantom(rng)
    arr, affine = arr[::2, ::2, 33:34], affine @ np.diag([2.0, 2.0, 1.0, 1.0])  # one slice: CPU time
    masker = build_masker("lungmask", weights=lungmask_weights, force_cpu=True)
    assert isinstance(masker, LungmaskMasker) and masker.native_resolution
    labels = masker(arr, affine)
    assert labels.shape == arr.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, RIGHT, LEFT} and (labels == RIGHT).any()


def test_lungmask_lobes_model_merged_to_lungs(tmp_path, rng):
    w = _random_lungmask_weights(tmp_path / "lobes.pth", n_classes=6, favour=4)  # 4 = right middle lobe
    arr, affine, _ = make_chest_phantom(rng)
    labels = LungmaskMasker(weights=w, force_cpu=True)(arr[::2, ::2, 33:34], affine @ np.diag([2.0, 2.0, 1, 1]))
    assert set(np.unique(labels)) <= {0, RIGHT} and (labels == RIGHT).any()


def test_auto_masker_choice(lungmask_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # empty hub cache
    assert resolve_masker_spec("auto")["name"] == "classical"
    assert resolve_masker_spec("auto", weights=lungmask_weights)["name"] == "lungmask"
    with pytest.raises(ConfigError, match="no lungmask weights"):
        resolve_masker_spec("lungmask")
    with pytest.raises(ConfigError, match="--lungmask-weights given"):
        resolve_masker_spec("classical", weights=lungmask_weights)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    _random_lungmask_weights(hub / "unet_r231-d5d2fc3d.pth")
    spec = resolve_masker_spec("auto")
    assert spec["name"] == "lungmask" and spec["weights"].endswith("unet_r231-d5d2fc3d.pth")


def test_lungmask_bad_weights_file(tmp_path, rng):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    arr, affine, _ = make_chest_phantom(rng)
    with pytest.raises(InputError, match="not a lungmask state dict") as e:
        LungmaskMasker(weights=bad, force_cpu=True)(arr, affine)
    assert e.value.path == str(bad)


def test_preprocess_with_lungmask_path(lungmask_weights, rng):
    arr, affine, _ = make_chest_phantom(rng)
    vol = CTVolume(arr[::2, ::2, 33:34], affine @ np.diag([2.0, 2.0, 1.0, 1.0]), {"source": "phantom"})
    settings = PreprocessSettings(size=(32, 32, 32), spacing=(6, 6, 3), lung_volume_range_l=None,
                                  masker={"name": "lungmask", "weights": str(lungmask_weights), "force_cpu": True})
    res = preprocess_volume(vol, settings)
    assert res.image.shape == (32, 32, 32) and res.lung_mask.any()
    assert res.qc["masker"] == "LungmaskMasker"
    assert lung_volumes(res.lung_mask, res.affine)["total_l"] > 0
