"""Heads: softmin properties (p = 0 off the valid set, sums to 1, shift invariance), regularisers, every head."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from survival3d.models.heads import (
    HEAD_AGGREGATES,
    HEAD_CONTEXTS,
    HEADS,
    RATE_LOC_MIN,
    SoftminHead,
    _masked_upsample,
    cubelet_valid_mask,
    masked_harmonic_mean,
    masked_soft_minimum,
    masked_softmin,
)


def _valid(b, grid, frac=0.6):
    v = torch.rand(b, 1, *grid) < frac
    v.view(b, -1)[:, 0] = True  # at least one valid cubelet per case
    return v


def test_softmin_p_zero_on_invalid_and_sums_to_one():
    head = SoftminHead(16, hidden=[8, 8], beta_init=float(torch.empty(1).uniform_(0.5, 10)))
    valid = _valid(3, (3, 4, 5))
    res = head(torch.randn(3, 16, 3, 4, 5), valid)
    p = res["p"]
    assert p.shape == (3, 1, 3, 4, 5) and res["loc"].shape == p.shape
    assert torch.equal(p[~valid], torch.zeros_like(p[~valid]))
    torch.testing.assert_close(p.flatten(1).sum(1), torch.ones(3))
    assert (res["loc"] > 0).all()
    torch.testing.assert_close(res["pred"], (p * res["loc"]).flatten(1).sum(1))
    # the prediction lies between the smallest and largest valid loc
    loc = res["loc"].flatten(1).masked_fill(~valid.flatten(1), float("nan"))
    assert (res["pred"] >= loc.nan_to_num(float("inf")).min(1).values - 1e-4).all()
    assert (res["pred"] <= loc.nan_to_num(-float("inf")).max(1).values + 1e-4).all()


def test_softmin_invariant_to_constant_shift():
    loc = torch.randn(4, 30) * 20 + 50
    valid = _valid(4, (30,)).reshape(4, 30)
    beta = torch.tensor(float(torch.empty(1).uniform_(0.1, 8)))
    c = float(torch.empty(1).uniform_(-40, 40))
    torch.testing.assert_close(masked_softmin(loc + c, valid, beta), masked_softmin(loc, valid, beta))
    # the head's p is this softmin of its locs
    head = SoftminHead(8)
    tokens = torch.randn(2, 8, 2, 3, 2)
    v = _valid(2, (2, 3, 2))
    res = head(tokens, v)
    torch.testing.assert_close(res["p"].flatten(1), masked_softmin(res["loc"].flatten(1), v.flatten(1), head.beta))


def test_softmin_prefers_short_times():
    p = masked_softmin(torch.tensor([[10.0, 50.0, 60.0]]), torch.ones(1, 3, dtype=torch.bool), torch.tensor(1.0))
    assert p[0, 0] > 0.999


def test_init_values_and_positive_beta():
    head = SoftminHead(8, beta_init=3.0, loc_bias_init=60.0)
    assert head.beta.item() == pytest.approx(3.0) and head.loc_bias.item() == 60.0
    with torch.no_grad():
        head.log_beta.fill_(-50.0)
    assert head.beta.item() > 0


def test_valid_mask_from_lung_fraction_with_fallback():
    pad_valid = torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)
    pad_valid[..., 1, 1, 1] = False
    lung = torch.zeros(2, 1, 2, 2, 2)
    lung[0, 0, 0] = 0.8  # case 0: only the first slab has lung
    valid = cubelet_valid_mask(pad_valid, lung, 0.5)
    assert valid[0, 0, 0].all() and not valid[0, 0, 1].any()
    assert torch.equal(valid[1], pad_valid[0])  # case 1: no lung anywhere -> fall back to non-padding cubelets


def test_entropy_and_smoothness_regularisers():
    torch.manual_seed(torch.seed() % 2**31)
    tokens, valid = torch.randn(2, 8, 3, 3, 3), _valid(2, (3, 3, 3))
    base = SoftminHead(8)
    reg = SoftminHead(8, entropy_weight=0.3, smooth_weight=0.01)
    reg.load_state_dict(base.state_dict())
    assert base(tokens, valid)["reg_loss"].item() == 0.0
    res = reg(tokens, valid)
    p, loc = res["p"], res["loc"]
    ent = sum((pi[pi > 0] * pi[pi > 0].log()).sum() for pi in p) / 2
    diffs = []
    for b in range(2):
        for z, y, x in torch.nonzero(valid[b, 0]).tolist():
            for dz, dy, dx in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
                n = (z + dz, y + dy, x + dx)
                if max(n) < 3 and valid[b, 0][n]:
                    diffs.append((loc[b, 0, z, y, x] - loc[b, 0][n]) ** 2)
    smooth = torch.stack(diffs).mean() if diffs else torch.tensor(0.0)
    assert res["reg_loss"].item() == pytest.approx((0.3 * ent + 0.01 * smooth).item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("context", HEAD_CONTEXTS)
@pytest.mark.parametrize("aggregate", HEAD_AGGREGATES)
@pytest.mark.parametrize("name", HEADS.keys())
def test_every_head_shapes_and_grads(name, aggregate, context):
    head = HEADS.build({"name": name, "hidden": [8], "aggregate": aggregate, "context": context}, in_dim=12)
    tokens = torch.randn(3, 12, 2, 3, 4, requires_grad=True)
    res = head(tokens, _valid(3, (2, 3, 4)))
    assert res["pred"].shape == (3,) and (res["pred"] > 0).all()
    assert res["reg_loss"].ndim == 0
    (res["pred"].sum() + res["reg_loss"]).backward()
    assert tokens.grad.abs().sum() > 0
    for n, prm in head.named_parameters():
        if aggregate == "mean_rate" and n == "log_beta":  # β shapes the map only: no gradient from pred
            assert prm.grad is None or not prm.grad.any(), n
            continue
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", HEADS.keys())
@pytest.mark.parametrize("kwargs", [dict(hidden=[]), dict(hidden=[8, 8, 8]), dict(hidden=[0]), dict(loc_bias_init=0.0),
                                    dict(lung_frac_min=1.5)])
def test_head_ill_arguments(name, kwargs):
    with pytest.raises(ValueError):
        HEADS.build({"name": name, **kwargs}, in_dim=8)


@pytest.mark.parametrize("kwargs", [dict(beta_init=0.0), dict(smooth_weight=-1.0)])
def test_softmin_ill_arguments(kwargs):
    with pytest.raises(ValueError):
        SoftminHead(8, **kwargs)


def test_meanpool_rejects_regularisers():
    with pytest.raises(ValueError, match="regularise"):
        HEADS.build({"name": "meanpool", "entropy_weight": 0.1}, in_dim=8)


def test_entropy_regulariser_gradient_is_finite_when_p_underflows():
    """A sharp map: most valid p are exactly 0 in float32. xlogy's gradient would be NaN there."""
    torch.manual_seed(torch.seed() % 2**31)
    head = SoftminHead(8, beta_init=50.0, entropy_weight=0.02, loc_scale=100.0)
    tokens = torch.randn(2, 8, 3, 3, 3, requires_grad=True)
    res = head(tokens, _valid(2, (3, 3, 3)))
    assert (res["p"][res["valid"]] == 0).any()  # the case this test is about
    p64 = res["p"].detach().double()
    ref = sum(float((pi[pi > 0] * pi[pi > 0].log()).sum()) for pi in p64) / 2
    assert res["reg_loss"].item() == pytest.approx(0.02 * ref, rel=1e-5, abs=1e-9)
    (res["pred"].sum() + res["reg_loss"]).backward()
    assert torch.isfinite(tokens.grad).all()
    assert all(torch.isfinite(prm.grad).all() for prm in head.parameters() if prm.grad is not None)


def test_map_upsample_interpolates_loc_between_cubelet_centres():
    torch.manual_seed(torch.seed() % 2**31)
    coarse = SoftminHead(8, hidden=[8])
    fine = SoftminHead(8, hidden=[8], map_upsample=2)
    fine.load_state_dict(coarse.state_dict())
    tokens = torch.randn(2, 8, 2, 3, 2)
    valid = torch.ones(2, 1, 2, 3, 2, dtype=torch.bool)
    valid[1, 0, 0, 0, 0] = False
    with torch.no_grad():
        c, f = coarse(tokens, valid), fine(tokens, valid)
    assert f["p"].shape == (2, 1, 4, 6, 4)
    # reference trilinear interpolation (align_corners=False, edge-clamped) in float64, one axis at a time
    loc = c["loc"].double().numpy()

    def interp(a, axis):
        n = a.shape[axis]
        out = []
        for j in range(2 * n):
            x = min(max((j + 0.5) / 2 - 0.5, 0.0), n - 1.0)
            lo = int(np.floor(x))
            hi = min(lo + 1, n - 1)
            w = x - lo
            out.append((1 - w) * np.take(a, lo, axis) + w * np.take(a, hi, axis))
        return np.stack(out, axis)

    def interp3(a):
        return interp(interp(interp(a, 2), 3), 4)

    v = valid.double().numpy()
    fv = f["valid"]
    # normalised interpolation: the invalid cubelet of case 1 takes no part in its neighbours' fine values
    ref = np.where(interp3(v) > 0, interp3(loc * v) / np.maximum(interp3(v), 1e-300), interp3(loc))
    np.testing.assert_allclose(f["loc"].double().numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(f["loc"][0].double().numpy(), interp3(loc)[0], rtol=1e-5)  # all valid: plain
    assert not np.allclose(ref[1], interp3(loc)[1])  # the masked cubelet changes its neighbours' fine cells
    for b, _, z, y, x in np.ndindex(*fv.shape):  # each fine cell inherits its cubelet's validity
        assert bool(fv[b, 0, z, y, x]) == bool(valid[b, 0, z // 2, y // 2, x // 2])
    assert (f["p"][~fv] == 0).all()
    np.testing.assert_allclose(f["p"].flatten(1).sum(1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(f["pred"].double().numpy(), (f["p"].double() * f["loc"].double()).flatten(1).sum(1).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="map_upsample"):
        SoftminHead(8, map_upsample=0)


@pytest.mark.parametrize("f", [2, 3])
def test_map_upsample_ignores_invalid_cubelets(f):
    """An invalid cubelet (outside the lungs) does not move p on the valid fine cells, whatever its loc; with every
    cubelet valid the fine map is plain trilinear interpolation (bit for bit at f = 2)."""
    torch.manual_seed(torch.seed() % 2**31)
    head = SoftminHead(8, hidden=[8], map_upsample=f)
    tokens = torch.randn(1, 8, 3, 3, 3)
    valid = torch.ones(1, 1, 3, 3, 3, dtype=torch.bool)
    valid[0, 0, 1, 1, 0] = False
    with torch.no_grad():
        a = head(tokens, valid)
        changed = tokens.clone()
        changed[0, :, 1, 1, 0] = 50 * torch.randn(8)  # a very different loc on the invalid cubelet
        b = head(changed, valid)
        assert (head.locs(tokens) - head.locs(changed))[0, 0, 1, 1, 0].abs() > 0  # the invalid cubelet's loc moved
        torch.testing.assert_close(a["p"], b["p"], rtol=0, atol=1e-7)
        torch.testing.assert_close(a["pred"], b["pred"])
        all_valid = torch.ones(1, 1, 3, 3, 3, dtype=torch.bool)
        coarse = head.locs(tokens)
        plain = torch.nn.functional.interpolate(coarse, scale_factor=f, mode="trilinear", align_corners=False)
        out = head(tokens, all_valid)["loc"]
        if f == 2:
            assert torch.equal(out, plain)
        else:
            torch.testing.assert_close(out, plain)
    # the interpolation itself: any loc on the invalid cubelet, the same fine values on every valid cubelet
    loc = 50 + 10 * torch.randn(1, 1, 3, 3, 3)
    far = loc.clone()
    far[0, 0, 1, 1, 0] += 1000.0
    a, b = _masked_upsample(loc, valid, f), _masked_upsample(far, valid, f)
    fine_valid = valid.repeat_interleave(f, 2).repeat_interleave(f, 3).repeat_interleave(f, 4)
    torch.testing.assert_close(a[fine_valid], b[fine_valid], rtol=0, atol=1e-4)
    assert (a - F.interpolate(far, scale_factor=f, mode="trilinear", align_corners=False))[fine_valid].abs().max() > 100


def test_context_mean_sees_the_valid_volume_only():
    """context='mean': each cubelet's time depends on the mean valid token (a change to another valid cubelet moves
    it), never on invalid cubelets; the formula is checked against a hand computation."""
    torch.manual_seed(torch.seed() % 2**31)
    head = SoftminHead(8, hidden=[8], context="mean")
    tokens = torch.randn(2, 8, 3, 3, 3)
    valid = torch.ones(2, 1, 3, 3, 3, dtype=torch.bool)
    valid[:, 0, 2] = False  # the last slab is invalid
    with torch.no_grad():
        out = head(tokens, valid)
        far = tokens.clone()
        far[:, :, 0, 0, 0] += 3 * torch.randn(2, 8)  # another valid cubelet
        moved = head(far, valid)["loc"]
        assert (moved - out["loc"])[:, 0, 1:2].abs().min() > 0  # every cubelet of slab 1 changes
        junk = tokens.clone()
        junk[:, :, 2] = 100 * torch.randn(2, 8, 3, 3)  # invalid cubelets
        torch.testing.assert_close(head(junk, valid)["loc"][:, :, :2], out["loc"][:, :, :2])
        # by hand: LN(x_i) ++ LN_g(mean of valid x), then the bias-free MLP
        x = tokens.movedim(1, -1)
        g = tokens[:, :, :2].flatten(2).mean(2)
        ln, lin1, act, lin2 = head.mlp
        z = torch.cat([x, head.context_norm(g)[:, None, None, None, :].expand(*x.shape[:-1], 8)], -1)
        ref = torch.nn.functional.softplus(head.loc_scale * lin2(act(lin1(ln(z)))) + head.loc_bias).movedim(-1, 1)
        torch.testing.assert_close(out["loc"], ref)
    tokens.requires_grad_(True)
    head(tokens, valid)["pred"].sum().backward()
    assert torch.isfinite(tokens.grad).all() and tokens.grad[:, :, 2].abs().max() == 0
    with pytest.raises(ValueError, match="context must be one of none, mean, max, mean_max"):
        SoftminHead(8, context="median")
    with pytest.raises(ValueError, match="needs the valid cubelets"):
        head.locs(tokens)


@pytest.mark.parametrize("context", ["max", "mean_max"])
def test_context_max_pools_the_valid_tokens_channel_wise(context):
    """context='max' / 'mean_max': each cubelet's time sees LN_g of the channel-wise max (and the mean) of the valid
    tokens, by hand; invalid cubelets never count, even when they hold the largest values; each channel's gradient
    through the pooled vector reaches its arg-max valid token alone, at full size."""
    torch.manual_seed(torch.seed() % 2**31)
    head = SoftminHead(8, hidden=[8], context=context)
    tokens = torch.randn(2, 8, 3, 3, 3)
    valid = torch.rand(2, 1, 3, 3, 3) < 0.6
    valid[:, :, 0, 0, 0] = True
    tokens = tokens.masked_fill(~valid, 50.0)  # invalid cubelets hold the largest values
    with torch.no_grad():
        out = head(tokens, valid)
        x = tokens.movedim(1, -1)
        pooled = []
        for b in range(2):
            v = tokens[b].flatten(1)[:, valid[b, 0].flatten()]
            pooled.append(torch.cat(([v.mean(1)] if context == "mean_max" else []) + [v.max(1).values]))
        g = head.context_norm(torch.stack(pooled))
        z = torch.cat([x, g[:, None, None, None, :].expand(*x.shape[:-1], -1)], -1)
        ln, lin1, act, lin2 = head.mlp
        ref = torch.nn.functional.softplus(head.loc_scale * lin2(act(lin1(ln(z)))) + head.loc_bias).movedim(-1, 1)
        torch.testing.assert_close(out["loc"], ref)
        assert head.mlp[0].normalized_shape == ((3 if context == "mean_max" else 2) * 8,)
    # the pooled vector's gradient: one token per channel for max, and none through invalid cubelets
    t = tokens.clone().requires_grad_(True)
    from survival3d.models.heads import _masked_max
    w = torch.randn(2, 8)
    (w * _masked_max(t, valid)).sum().backward()
    assert (t.grad != 0).flatten(2).sum(2).le(1).all() and t.grad.masked_select(~valid.expand_as(t)).abs().max() == 0
    torch.testing.assert_close(t.grad.flatten(2).sum(2), w)
    arg = tokens.masked_fill(~valid, float("-inf")).flatten(2).argmax(2)  # where each channel's gradient must land
    torch.testing.assert_close(t.grad.flatten(2).gather(2, arg[..., None])[..., 0], w)
    tokens.requires_grad_(True)
    head(tokens, valid)["pred"].sum().backward()
    assert torch.isfinite(tokens.grad).all() and tokens.grad.masked_select(~valid.expand_as(tokens)).abs().max() == 0
    # a volume without a valid cubelet pools to 0, not -inf
    assert torch.equal(_masked_max(tokens, torch.zeros_like(valid)), torch.zeros(2, 8))


def test_beta_warmup_scale_acts_in_training_only():
    """set_beta_scale(r): in training mode p is the softmin at r·β (r = 0: uniform over the valid cubelets, pred =
    their mean time, every valid cubelet's time gets gradient 1/|V|); evaluation uses the full β; not saved."""
    torch.manual_seed(torch.seed() % 2**31)
    head = SoftminHead(8, hidden=[8], beta_init=float(torch.empty(1).uniform_(1, 8)))
    tokens = torch.randn(2, 8, 3, 2, 3)
    valid = _valid(2, (3, 2, 3))
    n = valid.flatten(1).sum(1)
    r = float(torch.empty(1).uniform_(0.1, 0.9))
    head.train()
    head.set_beta_scale(r)
    res = head(tokens, valid)
    torch.testing.assert_close(res["p"].flatten(1), masked_softmin(res["loc"].flatten(1), valid.flatten(1), r * head.beta))
    head.set_beta_scale(0.0)
    res = head(tokens, valid)
    torch.testing.assert_close(res["p"].flatten(1), valid.flatten(1) / n[:, None].float())
    loc = res["loc"].flatten(1)
    torch.testing.assert_close(res["pred"], (loc * valid.flatten(1)).sum(1) / n)
    grad = torch.autograd.grad(res["pred"].sum(), res["loc"])[0].flatten(1)
    torch.testing.assert_close(grad, valid.flatten(1) / n[:, None].float())
    head.eval()  # evaluation: the full β whatever the warm-up factor
    res = head(tokens, valid)
    torch.testing.assert_close(res["p"].flatten(1), masked_softmin(res["loc"].flatten(1), valid.flatten(1), head.beta))
    assert "beta_scale" not in head.state_dict()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="warm-up factor must be in"):
            head.set_beta_scale(bad)


def _soft_minimum_reference(loc, valid, beta):
    """float64 loop: -1/beta log(mean over the valid entries of exp(-beta loc)); the mean at beta = 0."""
    out = []
    for row, v in zip(loc.double(), valid):
        x = row[v]
        out.append(x.mean() if beta == 0 else -torch.log(torch.exp(-beta * x).mean()) / beta)
    return torch.stack(out)


def test_soft_minimum_against_a_float64_reference_and_its_limits():
    b, n = 5, 40
    loc = torch.rand(b, n, dtype=torch.float64) * 90 + 5
    valid = _valid(b, (n,)).reshape(b, n)
    for beta in (float(torch.empty(1).uniform_(0.01, 0.5)), float(torch.empty(1).uniform_(0.5, 5)), 0.0):
        got = masked_soft_minimum(loc, valid, torch.tensor(beta, dtype=torch.float64))
        torch.testing.assert_close(got, _soft_minimum_reference(loc, valid, beta), rtol=1e-12, atol=1e-10)
    lo = loc.masked_fill(~valid, float("inf")).min(1).values
    mean = (loc * valid).sum(1) / valid.sum(1)
    big = masked_soft_minimum(loc, valid, torch.tensor(1e4, dtype=torch.float64))
    assert (big >= lo).all() and (big - lo < 1e-3).all()  # beta -> inf: the minimum
    tiny = masked_soft_minimum(loc, valid, torch.tensor(1e-6, dtype=torch.float64))
    # beta -> 0: the mean, less beta/2 times the (population) variance of the valid entries (cumulant expansion)
    var = (((loc - mean[:, None]) ** 2) * valid).sum(1) / valid.sum(1)
    torch.testing.assert_close(tiny, mean - 0.5e-6 * var, rtol=0, atol=1e-6)
    mid = masked_soft_minimum(loc, valid, torch.tensor(1.0, dtype=torch.float64))
    assert (mid >= lo).all() and (mid <= mean).all()
    # invalid entries take no part, whatever their value
    torch.testing.assert_close(masked_soft_minimum(loc.masked_fill(~valid, -1e6), valid, torch.tensor(1.0, dtype=torch.float64)), mid)


def test_soft_minimum_adds_the_burden_and_the_weighted_mean_does_not():
    """k of N cubelets at L, the rest at H: mean_hazard gives -1/beta log((k e^{-beta L} + (N-k) e^{-beta H}) / N),
    which falls as k grows (two lesions shorter than one); sum p loc is nearly L for every k."""
    n, lo_t, hi_t, beta = 500, 20.0, 70.0, torch.tensor(0.5)
    preds, weighted = [], []
    for k in (5, 10, 20):
        loc = torch.full((1, n), hi_t)
        loc[0, :k] = lo_t
        valid = torch.ones(1, n, dtype=torch.bool)
        closed = -np.log((k * np.exp(-0.5 * lo_t) + (n - k) * np.exp(-0.5 * hi_t)) / n) / 0.5
        got = masked_soft_minimum(loc, valid, beta)
        assert got.item() == pytest.approx(closed, rel=1e-5)
        preds.append(got.item())
        weighted.append((masked_softmin(loc, valid, beta) * loc).sum().item())
    assert preds[0] - preds[1] == pytest.approx(np.log(2) / 0.5, rel=1e-3) and preds[1] > preds[2]
    assert max(weighted) - min(weighted) < 1e-3


def test_soft_minimum_gradcheck_and_finite_at_beta_zero():
    loc = (torch.rand(3, 12, dtype=torch.float64) * 50 + 10).requires_grad_()
    valid = _valid(3, (12,)).reshape(3, 12)
    beta = torch.tensor(float(torch.empty(1).uniform_(0.05, 2)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: masked_soft_minimum(x, valid, b), (loc, beta))
    zero = torch.zeros((), dtype=torch.float64, requires_grad=True)
    out = masked_soft_minimum(loc, valid, zero)
    g_loc, g_beta = torch.autograd.grad(out.sum(), (loc, zero))
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_beta)
    torch.testing.assert_close(g_loc, (valid / valid.sum(1, keepdim=True)).double())  # the mean's gradient


def _with_aggregate(aggregate):
    """A weighted-mean head at a random β and a head with the same weights and ``aggregate``, on fresh tokens: the
    second head, tokens, valid and both outputs; p and loc must agree (the aggregate changes pred only)."""
    torch.manual_seed(torch.seed() % 2**31)
    a = SoftminHead(8, hidden=[8], beta_init=float(torch.empty(1).uniform_(0.2, 3)))
    h = SoftminHead(8, hidden=[8], aggregate=aggregate)
    h.load_state_dict(a.state_dict())
    tokens, valid = torch.randn(2, 8, 3, 4, 2), _valid(2, (3, 4, 2))
    ra, rh = a(tokens, valid), h(tokens, valid)
    torch.testing.assert_close(rh["p"], ra["p"])
    torch.testing.assert_close(rh["loc"], ra["loc"])
    return h, tokens, valid, ra, rh


def test_mean_hazard_head_keeps_p_and_changes_pred_only():
    h, tokens, valid, ra, rh = _with_aggregate("mean_hazard")
    torch.testing.assert_close(rh["pred"], masked_soft_minimum(rh["loc"].flatten(1), valid.flatten(1), h.beta))
    # free energy: log-mean-exp = sum p loc + KL(p || uniform on V) / beta = sum p loc + (log |V| - H(p)) / beta
    p = ra["p"].flatten(1).double()
    kl = valid.flatten(1).sum(1).double().log() + (p * p.clamp_min(1e-300).log()).sum(1)
    torch.testing.assert_close(rh["pred"].double(), ra["pred"].double() + kl / h.beta.double(), rtol=1e-5, atol=1e-4)
    h.train()
    h.set_beta_scale(0.0)  # the first warm-up epoch: the mean of the valid times, as for the weighted mean
    r0 = h(tokens, valid)
    n = valid.flatten(1).sum(1)
    torch.testing.assert_close(r0["pred"], (r0["loc"].flatten(1) * valid.flatten(1)).sum(1) / n)
    with pytest.raises(ValueError, match="aggregate must be one of weighted_mean, mean_hazard"):
        SoftminHead(8, aggregate="sum")


def test_harmonic_mean_closed_form_burden_and_float64_gradient():
    """k of N cubelets at L, the rest at H: N / (k/L + (N-k)/H); twice the lesion cubelets, about half the time;
    invalid entries take no part; gradcheck in float64."""
    n, lo_t, hi_t = 500, float(np.random.uniform(0.005, 0.02)), float(np.random.uniform(60, 90))  # lesions dominate the rate
    preds = []
    for k in (5, 10, 20):
        loc = torch.full((1, n), hi_t, dtype=torch.float64)
        loc[0, :k] = lo_t
        valid = torch.ones(1, n, dtype=torch.bool)
        got = masked_harmonic_mean(loc, valid)
        assert got.item() == pytest.approx(n / (k / lo_t + (n - k) / hi_t), rel=1e-12)
        preds.append(got.item())
    assert preds[0] / preds[1] == pytest.approx(2.0, rel=0.1) and preds[1] / preds[2] == pytest.approx(2.0, rel=0.1)
    loc = (torch.rand(3, 12, dtype=torch.float64) * 50 + 0.5).requires_grad_()
    valid = _valid(3, (12,)).reshape(3, 12)
    ref = valid.sum(1) / (valid / loc.detach()).sum(1)
    torch.testing.assert_close(masked_harmonic_mean(loc, valid), ref.double())
    lo, mean = loc.detach().masked_fill(~valid, np.inf).min(1).values, (loc.detach() * valid).sum(1) / valid.sum(1)
    got = masked_harmonic_mean(loc.detach(), valid)
    assert (got >= lo - 1e-12).all() and (got <= mean + 1e-12).all()
    torch.testing.assert_close(masked_harmonic_mean(loc.detach().masked_fill(~valid, 1e-9), valid), got)
    assert torch.autograd.gradcheck(lambda x: masked_harmonic_mean(x, valid), (loc,))
    # a loc that underflowed to 0 counts as RATE_LOC_MIN: finite prediction and gradient
    z = torch.tensor([[0.0, 10.0, 10.0]], requires_grad=True)
    out = masked_harmonic_mean(z, torch.ones(1, 3, dtype=torch.bool))
    out.sum().backward()
    assert out.item() == pytest.approx(3 / (1 / RATE_LOC_MIN + 0.2), rel=1e-5) and torch.isfinite(z.grad).all()


def test_mean_rate_head_keeps_p_and_ignores_beta_in_pred():
    h, tokens, valid, _, rh = _with_aggregate("mean_rate")
    torch.testing.assert_close(rh["pred"], masked_harmonic_mean(rh["loc"].flatten(1), valid.flatten(1)))
    with torch.no_grad():
        h.log_beta.add_(1.0)
    rb = h(tokens, valid)
    torch.testing.assert_close(rb["pred"], rh["pred"])
    assert not torch.allclose(rb["p"], rh["p"])
