"""losses.functional.flip_consistency against a float64 loop reference on fresh random maps, its gradient
against float64 finite differences, and its zero for flip-equivariant maps."""

import itertools

import numpy as np
import pytest
import torch

from survival3d.losses.functional import flip_consistency

FLIPS = [list(d) for k in (1, 2, 3) for d in itertools.combinations((2, 3, 4), k)]


def _reference(loc, loc_f, valid, dims):
    b, _, d, h, w = loc.shape
    per_case = []
    for k in range(b):
        total, count = 0.0, 0
        for z, y, x in itertools.product(range(d), range(h), range(w)):
            mz = d - 1 - z if 2 in dims else z
            my = h - 1 - y if 3 in dims else y
            mx = w - 1 - x if 4 in dims else x
            if valid is not None and not (valid[k, 0, z, y, x] and valid[k, 0, mz, my, mx]):
                continue
            total += (float(loc[k, 0, z, y, x]) - float(loc_f[k, 0, mz, my, mx])) ** 2
            count += 1
        per_case.append(total / max(count, 1))
    return float(np.mean(per_case))


@pytest.mark.parametrize("dims", FLIPS, ids=str)
def test_matches_loop_reference(rng, dims):
    shape = (3, 1, 3, 4, 5)
    loc = rng.uniform(0, 100, shape)
    loc_f = rng.uniform(0, 100, shape)
    valid = rng.random(shape) < 0.7
    got = flip_consistency(torch.tensor(loc), torch.tensor(loc_f), torch.tensor(valid), dims)
    assert float(got) == pytest.approx(_reference(loc, loc_f, valid, dims), rel=1e-10)
    got_all = flip_consistency(torch.tensor(loc), torch.tensor(loc_f), None, dims)
    assert float(got_all) == pytest.approx(_reference(loc, loc_f, None, dims), rel=1e-10)


@pytest.mark.parametrize("dims", FLIPS, ids=str)
def test_zero_for_an_equivariant_map_and_gradcheck(rng, dims):
    loc = torch.tensor(rng.normal(size=(2, 1, 3, 3, 4)))
    valid = torch.tensor(rng.random((2, 1, 3, 3, 4)) < 0.8)
    assert float(flip_consistency(loc, loc.flip(dims), valid, dims)) == 0.0  # the flipped input's map, mirrored
    a = loc.clone().requires_grad_(True)
    b = torch.tensor(rng.normal(size=(2, 1, 3, 3, 4)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: flip_consistency(x, y, valid, dims), (a, b))
