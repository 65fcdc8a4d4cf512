"""BaselineFeatureAct (the FeatureAct notes' CNN), its registration as a GLSA backbone, the activation figure and
`run.py glsa-activations`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from survival3d.config import load_config
from survival3d.errors import ConfigError
from survival3d.glsa.activations import activation_maps, save_activation_figure
from survival3d.glsa.backbones import BACKBONES, create_model
from survival3d.glsa.config import GLSAConfig
from survival3d.glsa.featureact_net import BaselineFeatureAct
from survival3d.glsa.trainer import load_classifier, train
from survival3d.layers.attention import FeatureAct

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(widths=(8, 16, 16, 32), hidden=(32, 16))




def _seed():
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, ())))


def test_default_is_the_notes_network():
    net = BaselineFeatureAct(7, in_channels=1, input_size=48)
    assert [a.img_size for a in net.attn] == [24, 12, 6, 3]  # the notes' FeatureAct(32, 24, 4) ... (256, 3, 4)
    assert [(a.channels, a.dim) for a in net.attn] == [(32, 8), (64, 16), (128, 32), (256, 64)]
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2304, 256), (256, 128), (128, 7)]
    assert isinstance(net.classifier[-1], torch.nn.BatchNorm1d)  # BN on the logits, as in the notes
    assert net(torch.randn(3, 1, 48, 48)).shape == (3, 7)


@pytest.mark.parametrize("widths, size", [((8, 16), 8), ((8, 16, 16), 24), ((4, 8, 8, 8, 16), 64)])
def test_configurable_depth_and_widths(widths, size):
    net = BaselineFeatureAct(5, input_size=size, widths=widths, convs_per_stage=1, hidden=(12,))
    assert len(net.stages) == len(widths)
    assert [a.img_size for a in net.attn] == [size // 2 ** (i + 1) for i in range(len(widths))]
    assert net.forward_features(torch.randn(2, 3, size, size)).shape == (2, widths[-1], size >> len(widths),
                                                                       size >> len(widths))
    assert net(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_embeddings_are_the_penultimate_features():
    _seed()
    logits = BaselineFeatureAct(7, input_size=32, **SMALL).eval()
    emb = BaselineFeatureAct(7, input_size=32, embeddings=True, **SMALL).eval()
    missing, unexpected = emb.load_state_dict(logits.state_dict(), strict=False)
    assert not missing and len(unexpected) == 2 + 5  # the last Linear (w, b) and BatchNorm1d (w, b, stats)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = logits.classifier[:-3](logits.forward_features(x))  # up to the last hidden BN, before its ReLU
        got = emb(x)
    assert got.shape == (4, 16) and emb.out_features == 16
    torch.testing.assert_close(got, want)
    assert (got < 0).any()  # no ReLU on the embeddings


def test_plain_cnn_is_the_same_network_without_featureact():
    _seed()
    fa = BaselineFeatureAct(7, input_size=32, **SMALL)
    plain = BaselineFeatureAct(7, input_size=32, attention="none", **SMALL)
    assert not any(isinstance(m, FeatureAct) for m in plain.modules())
    counts = fa.count_parameters()
    assert counts["total"] - plain.count_parameters()["total"] == counts["attention"] > 0
    assert plain.count_parameters()["attention"] == 0


def test_stage_activations_compose_to_the_forward_pass():
    _seed()
    net = BaselineFeatureAct(7, input_size=32, attention={"name": "featureact", "cor": "sigmoid"}, **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    stages = net.stage_activations(x)
    assert len(stages) == 4
    for s in stages:
        torch.testing.assert_close(s["output"], s["features"] + s["cor_feature"])
        assert (s["cor_feature"] >= 0).all()  # ReLU(W_u f)
    with torch.no_grad():
        torch.testing.assert_close(stages[-1]["output"], net.forward_features(x))


def test_registered_backbone_and_errors():
    assert "baseline_featureact" in BACKBONES
    net = create_model("baseline_featureact", False, 4, "featureact", input_size=32, widths=[8, 8, 8, 8], hidden=[8])
    assert isinstance(net, BaselineFeatureAct) and all(a.dim == 2 for a in net.attn)  # reduction 4
    assert isinstance(create_model("baseline_featureact", False, 4, "se", input_size=32, widths=[8, 8, 8, 8]).attn[0],
                      torch.nn.Module)
    with pytest.raises(ConfigError, match="fusion"):
        create_model("baseline_featureact", False, 4, "featureact", "learnable_gate", input_size=32)
    with pytest.raises(ConfigError, match="multiple of 2\\^4"):
        create_model("baseline_featureact", False, 4, "featureact", input_size=40)
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("baseline_featureact", True, 4, "featureact", input_size=32)
    with pytest.raises(ConfigError, match="Did you mean 'featureact'"):
        create_model("baseline_featureact", False, 4, "featurect", input_size=32)


def test_learns_a_small_batch():
    _seed()
    net = BaselineFeatureAct(3, input_size=16, widths=(8, 8), hidden=(16,))
    x, y = torch.randn(24, 3, 16, 16), torch.arange(24) % 3
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("attention", ["featureact", "none"])
def test_activation_figure(tmp_path, attention):
    _seed()
    net = BaselineFeatureAct(7, input_size=32, attention=attention, **SMALL)
    image = torch.randn(3, 32, 32)
    maps = activation_maps(net, image)
    assert [m["features"].shape for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert all((m["cor_feature"] is None) == (attention == "none") for m in maps)
    assert net.training  # mode restored
    path = save_activation_figure(net, image, tmp_path / "a.png", title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 500 and np.asarray(im).std() > 0


def test_activation_figure_refuses_other_networks():
    with pytest.raises(ValueError, match="baseline_featureact"):
        activation_maps(torch.nn.Conv2d(3, 3, 1), torch.randn(3, 8, 8))


def test_trains_reloads_and_draws_from_the_cli(tmp_path):
    cfg = load_config(ROOT / "configs/glsa/digits_featureact.yaml",
                      [f"train.output_dir={tmp_path}", "train.epochs=1", "data.max_samples=64", "model.widths=[8,8,8,8]",
                       "model.hidden=[16]", "train.gradcam_images=2"], schema=GLSAConfig)
    res = train(cfg)
    run = tmp_path / res["run_name"]
    assert res["backbone"] == "baseline_featureact" and res["attention"] == "featureact"
    assert (run / "gradcam.png").read_bytes()[:4] == b"\x89PNG"
    model, classes, _ = load_classifier(run)
    assert isinstance(model, BaselineFeatureAct) and len(classes) == 7
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "glsa-activations", "--model", str(run), "--out",
                          str(tmp_path / "figs"), "--images", "2"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["activations_0.png", "activations_1.png"]
    bad = subprocess.run([sys.executable, str(ROOT / "run.py"), "glsa-activations", "--model", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "best.pt" in bad.stderr
