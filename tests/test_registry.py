import pytest

from survival3d.errors import ConfigError
from survival3d.registry import Registry


def make():
    reg = Registry("head")

    @reg.register("softmin")
    class Softmin:
        def __init__(self, in_dim, beta_init=5.0):
            self.in_dim, self.beta_init = in_dim, beta_init

    reg.register("meanpool", lambda in_dim: ("meanpool", in_dim))
    return reg, Softmin


def test_build_from_name_and_mapping():
    reg, Softmin = make()
    a = reg.build("softmin", in_dim=8)
    assert isinstance(a, Softmin) and a.in_dim == 8 and a.beta_init == 5.0
    b = reg.build({"name": "SoftMin", "beta_init": 2.5}, in_dim=4)
    assert b.beta_init == 2.5 and b.in_dim == 4
    assert reg.build("meanpool", in_dim=3) == ("meanpool", 3)
    assert reg.keys() == ["meanpool", "softmin"] and reg.keys("soft*") == ["softmin"]
    assert "softmin" in reg and "other" not in reg and len(reg) == 2


def test_unknown_name_suggests():
    reg, _ = make()
    with pytest.raises(ConfigError, match=r"unknown head 'sofmin'.*Did you mean 'softmin'.*meanpool, softmin"):
        reg.get("sofmin")


def test_bad_specs():
    reg, _ = make()
    with pytest.raises(ConfigError, match="no 'name'"):
        reg.build({"beta_init": 1.0}, in_dim=1)
    with pytest.raises(ConfigError, match="set by the caller"):
        reg.build({"name": "softmin", "in_dim": 3}, in_dim=1)
    with pytest.raises(ConfigError):
        reg.build(42)


def test_duplicate_registration():
    reg, Softmin = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("softmin", lambda: None)
    reg.register("softmin", Softmin)  # the same object again is fine
    with pytest.raises(ValueError):
        reg.register("", lambda: None)


def test_build_with_context_passes_only_accepted_keywords():
    reg, Softmin = make()
    obj = reg.build_with_context({"name": "softmin", "beta_init": 1.5}, in_dim=4, img_size=7, num_heads=2)
    assert isinstance(obj, Softmin) and obj.in_dim == 4 and obj.beta_init == 1.5
    with pytest.raises(ConfigError, match=r"has no option\(s\) \['beta'\].*valid options: \['beta_init'\]"):
        reg.build_with_context({"name": "softmin", "beta": 1.0}, in_dim=4)
