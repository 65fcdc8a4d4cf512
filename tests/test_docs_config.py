"""docs/config.md documents every key of the 3D pipeline's schema (a new key without docs fails here)."""

import dataclasses
from pathlib import Path

from survival3d.config.schema import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _keys(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_every_schema_key_is_documented():
    doc = (ROOT / "docs" / "config.md").read_text()
    keys = list(_keys(ExperimentConfig))
    assert len(keys) > 50
    assert [k for k in keys if f"`{k}`" not in doc] == []


def test_research_names_are_mapped_once():
    doc = (ROOT / "docs" / "config.md").read_text()
    for name, key in [("ALPHA_CENS", "loss.alpha_cens"), ("VAR_INIT", "loss.var_init"), ("TMAX", "loss.tmax"),
                      ("BETA_HEAD", "head.beta_init"), ("loc_bias", "head.loc_bias_init"),
                      ("feat_frac", "data.dummy.feat_frac")]:
        assert name in doc and f"`{key}`" in doc
