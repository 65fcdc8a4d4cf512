import pytest
import yaml

from survival3d.config import ExperimentConfig, load_config, parse_overrides, save_config
from survival3d.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(schema=ExperimentConfig, overrides=["model.depth=4", "loss.alpha_cens=2.5", "head.hidden=[32,16]"])
    assert cfg.model.depth == 4 and cfg.loss.alpha_cens == 2.5 and list(cfg.head.hidden) == [32, 16]
    assert cfg.head.beta_init == 5.0  # untouched default


def test_yaml_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": {"depth": 3, "embed_dim": 32}, "loss": {"tmax": 80}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "model": {"depth": 5}}))
    cfg = load_config(tmp_path / "child.yaml", ["loss.tmax=90"], schema=ExperimentConfig)
    assert cfg.model.depth == 5 and cfg.model.embed_dim == 32 and cfg.loss.tmax == 90


def test_inheritance_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml", schema=ExperimentConfig)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("model.dpeth=4", r"unknown config key 'model.dpeth'.*Did you mean 'model.depth'.*Valid keys under 'model'"),
        ("lose.alpha_cens=1", r"unknown config key 'lose'.*Did you mean 'loss'"),
        ("loss.alpha_cens=abc", r"invalid value for 'loss.alpha_cens'"),
        ("model.depth", r"must look like key.sub=value"),
    ],
)
def test_override_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(schema=ExperimentConfig, overrides=[override])


def test_unknown_key_in_file_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"head": {"beta_int": 3.0}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'head.beta_int'.*beta_init"):
        load_config(p, schema=ExperimentConfig)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", schema=ExperimentConfig)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml", schema=ExperimentConfig)


def test_save_roundtrip(tmp_path):
    cfg = load_config(schema=ExperimentConfig, overrides=["name=x", "train.epochs=3"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(out, schema=ExperimentConfig)
    assert again == cfg
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_parse_overrides_types():
    d = parse_overrides(["a.b=1", "a.c=1.5", "d=true", "e=null", "f=[1, 2]", "g=hello"])
    assert d == {"a": {"b": 1, "c": 1.5}, "d": True, "e": None, "f": [1, 2], "g": "hello"}
