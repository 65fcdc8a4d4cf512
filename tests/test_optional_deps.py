"""wandb, grad-cam and lungmask are optional extras: without them the project degrades with one warning line.

A missing package is simulated by ``sys.modules[name] = None`` (``import name`` then raises ImportError).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def _hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_wandb_missing_turns_logging_off_with_one_warning(monkeypatch, tmp_path, caplog):
    from survival3d.engine.loop import Engine

    _hide(monkeypatch, "wandb")
    for key in ("WANDB_DIR", "WANDB_MODE", "WANDB_SILENT"):
        monkeypatch.delenv(key, raising=False)
    fake = SimpleNamespace(settings=SimpleNamespace(wandb={"mode": "offline"}), dist=SimpleNamespace(is_main=True),
                           run_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        Engine._init_wandb(fake)
    assert fake.wandb_run is None
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "wandb is not installed" in msgs[0] and "survival3d[wandb]" in msgs[0]


def test_gradcam_missing_skips_the_figure(monkeypatch, tmp_path, caplog):
    from survival3d.glsa.trainer import save_gradcam

    _hide(monkeypatch, "pytorch_grad_cam", "pytorch_grad_cam.utils.image", "pytorch_grad_cam.utils.model_targets")
    with caplog.at_level(logging.WARNING):
        save_gradcam(None, None, None, 4, tmp_path / "gradcam.png", seed=0)  # returns before touching the model
    assert not (tmp_path / "gradcam.png").exists()
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "grad-cam is not installed" in msgs[0] and "gradcam.png" in msgs[0]


def test_lungmask_missing_falls_back_to_the_classical_masker(monkeypatch, tmp_path, caplog):
    from survival3d.data.lung_masking import LungmaskMasker, find_lungmask_weights, resolve_masker_spec
    from survival3d.errors import ConfigError

    _hide(monkeypatch, "lungmask", "lungmask.mask")
    assert find_lungmask_weights("R231") is None
    with caplog.at_level(logging.INFO):
        assert resolve_masker_spec("auto") == {"name": "classical"}
    assert any("lungmask is not installed" in r.getMessage() for r in caplog.records)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"survival3d\[lungmask\]"):
        LungmaskMasker(weights=weights).inferer


def test_setup_cfg_declares_every_third_party_import():
    """Every third-party top-level module imported by the package is an install requirement or an extra."""
    import ast
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    declared = {ln.split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for section in ("install_requires",) for ln in cfg["options"][section].splitlines() if ln.strip()}
    extras = {ln.split(">")[0].split("=")[0].strip().lower()
              for ln in cfg["options.extras_require"].get("all", "").splitlines() if ln.strip()}
    module_to_dist = {"yaml": "pyyaml", "PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn",
                      "SimpleITK": "simpleitk", "pytorch_grad_cam": "grad-cam", "mpl_toolkits": "matplotlib"}
    stdlib = set(sys.stdlib_module_names)
    root = SETUP_CFG.parent / "survival3d"
    imported = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in stdlib and m != "survival3d"}
    missing = sorted(m for m in third_party if module_to_dist.get(m, m).lower() not in declared | extras)
    assert not missing, f"imported but not declared in setup.cfg: {missing}"
    # and the optional ones are extras, not hard requirements
    assert {"wandb", "grad-cam", "lungmask"} <= extras and not {"wandb", "grad-cam", "lungmask"} & declared
