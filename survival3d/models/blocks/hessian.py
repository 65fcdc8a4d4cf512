r"""A fixed multi-scale Hessian filter that enhances bright blobs (nodules) over tubes (vessels) and plates.

In a chest CT a small solid nodule and a vessel in cross-section have the same HU; what tells them apart is shape.
At each voxel the Hessian :math:`H_\sigma` of the Gaussian-smoothed image has three eigenvalues
:math:`e_1 \ge e_2 \ge e_3`. A bright blob has all three strongly negative; a bright tube has two (one near 0, along
its axis); a plate one. The *dot* enhancement of Li, Sone and Doi (Med. Phys. 30(8), 2003),

.. math:: z_\sigma = \begin{cases} e_1^2 / |e_3| & e_1 < 0 \\ 0 & \text{otherwise} \end{cases}

(the smallest-magnitude eigenvalue squared over the largest), is large only where all three are negative and of
similar size. It is computed on the scale-normalised Hessian :math:`\sigma^2 H_\sigma` at every scale and the maximum
over the scales is kept, times the gain :math:`2^{5/2}`: a bright Gaussian blob
:math:`c\,e^{-r^2/2s^2}` then gives exactly :math:`c` at its centre at the scale :math:`\sigma = s` (its Hessian there
is :math:`-c\,\sigma^{-2}\,2^{-5/2} I`), so the output is in the image's own intensity units.

The filter has no parameters; :class:`~survival3d.models.blocks.Conv3dPatchEmbed` feeds it to the stem as an extra
channel (``model.dot_filter_sigmas``). Scales are in voxels of the model's input grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["HessianDotFilter", "gaussian_derivative_kernels", "symmetric_eigvals3"]

_GAIN = 2.0 ** 2.5  # 1 / (the scale-normalised dot response of a unit Gaussian blob at sigma = its own s)


def gaussian_derivative_kernels(sigma: float, truncate: float = 4.0, dtype=torch.float32,
                                device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled 1D Gaussian and its first and second derivatives (radius ``round(truncate * sigma)``), the smoothing
    kernel normalised to sum 1 and the derivatives built from it, as ``scipy.ndimage.gaussian_filter`` does, except
    that the second derivative is shifted by a multiple of the smoothing kernel to sum to exactly 0: sampled, it sums
    to about -1e-3 at sigma 0.75, which would give a constant image a small isotropic "blob" response."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s2 = float(sigma) ** 2
    g = torch.exp(-0.5 * x * x / s2)
    g = g / g.sum()
    g1 = -x / s2 * g
    g2 = (x * x / (s2 * s2) - 1.0 / s2) * g
    g2 = g2 - g2.sum() * g  # annihilates constants (g sums to 1)
    return tuple(k.to(dtype=dtype, device=device) for k in (g, g1, g2))


def _axis_matrix(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """(length, length) matrix of the 1D convolution with ``kernel`` (odd size, centred) along an axis of
    ``length`` voxels, edges replicated (scipy's ``nearest``): ``y = M @ x``."""
    r = kernel.numel() // 2
    rows = torch.arange(length).repeat_interleave(kernel.numel())
    cols = (rows - torch.arange(-r, r + 1).repeat(length)).clamp(0, length - 1)
    m = torch.zeros(length, length, dtype=kernel.dtype, device=kernel.device)
    m.index_put_((rows.to(kernel.device), cols.to(kernel.device)), kernel.repeat(length), accumulate=True)
    return m


def _filter_axis(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply an axis matrix of :func:`_axis_matrix` along spatial ``axis`` (1, 2 or 3) of (N, D, H, W) as one
    matrix product (far faster on a CPU than a one-channel convolution with a long kernel)."""
    n, d, h, w = x.shape
    if axis == 1:
        return (matrix @ x.reshape(n, d, h * w)).reshape(n, d, h, w)
    if axis == 2:
        return (matrix @ x.reshape(n * d, h, w)).reshape(n, d, h, w)
    return x @ matrix.T


def symmetric_eigvals3(a11, a22, a33, a12, a13, a23) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalues ``e1 >= e2 >= e3`` of the symmetric 3x3 matrices with these entries (elementwise tensors), in
    closed form (the trigonometric solution of the characteristic cubic), so millions of them cost a few elementwise
    passes rather than a batched ``eigvalsh``."""
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p2 = b11 * b11 + b22 * b22 + b33 * b33 + 2.0 * p1
    p = torch.sqrt(p2 / 6.0)
    # isotropic to working precision (all three equal q): p at or below one ulp of the diagonal's scale. Near-isotropic
    # matrices (a blob's centre, whose off-diagonals are rounding residue ~1e-17) must not reach det(B) through p**3,
    # which underflows float32 to 0 and gives 0/0.
    scale = torch.maximum(q.abs(), p)
    iso = p <= torch.finfo(p.dtype).eps * scale
    safe = torch.where(iso, torch.ones_like(p), p)
    # det(B) / 2 with B = (A - qI) / p: every entry divided by p first, so each is at most sqrt(6) in size
    c11, c22, c33, c12, c13, c23 = (t / safe for t in (b11, b22, b33, a12, a13, a23))
    det = (c11 * (c22 * c33 - c23 * c23) - c12 * (c12 * c33 - c23 * c13) + c13 * (c12 * c23 - c22 * c13))
    r = (det / 2.0).clamp(-1.0, 1.0)
    phi = torch.acos(r) / 3.0
    p = torch.where(iso, torch.zeros_like(p), p)
    e1 = q + 2.0 * p * torch.cos(phi)
    e3 = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)
    e2 = 3.0 * q - e1 - e3
    return e1, e2, e3


class HessianDotFilter(nn.Module):
    r"""Multi-scale dot (blob) enhancement of every channel (module docstring); no parameters, no gradient.

    Args:
        sigmas: Gaussian scales in voxels (each > 0). A Gaussian blob of std :math:`s` responds most at
            :math:`\sigma = s \sqrt{2/3}`; several scales cover a range of sizes.
        truncate: kernel radius in sigmas.

    Forward:
        x: (B, C, D, H, W). Computed in float32 whatever the input dtype or autocast, without autograd (a fixed
        preprocessing step: gradient explainers attribute through the image channels only).

    Returns:
        (B, C, D, H, W) float32, >= 0.
    """

    def __init__(self, sigmas: Sequence[float], truncate: float = 4.0):
        super().__init__()
        sig = tuple(float(s) for s in sigmas)
        if not sig or any(not math.isfinite(s) or s <= 0 for s in sig):
            raise ValueError(f"dot_filter_sigmas must be positive numbers (voxels), got {list(sigmas)}.")
        self.sigmas = sig
        self.truncate = float(truncate)

    def extra_repr(self) -> str:
        return f"sigmas={list(self.sigmas)}"

    def hessian(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, ...]:
        """Scale-normalised Hessian entries (h11, h22, h33, h12, h13, h23) of (N, D, H, W) at ``sigma``."""
        kernels = gaussian_derivative_kernels(sigma, self.truncate, dtype=x.dtype, device=x.device)
        mats = [[_axis_matrix(k, n) for k in kernels] for n in x.shape[1:]]
        along_d = [_filter_axis(x, mats[0][o], 1) for o in range(3)]  # orders 0, 1, 2 along D
        dh = {(a, b): _filter_axis(along_d[a], mats[1][b], 2) for a, b in ((2, 0), (0, 2), (0, 0), (1, 1), (1, 0), (0, 1))}
        s2 = float(sigma) ** 2
        orders = ((2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1))
        return tuple(_filter_axis(dh[(a, b)], mats[2][c], 3) * s2 for a, b, c in orders)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, D, H, W), got shape {tuple(x.shape)}.")
        b, c = x.shape[:2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            v = x.detach().float().reshape(b * c, *x.shape[2:])
            best = torch.zeros_like(v)
            for sigma in self.sigmas:
                e1, _, e3 = symmetric_eigvals3(*self.hessian(v, sigma))
                dot = torch.where(e1 < 0, e1 * e1 / (-e3).clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(e1))
                best = torch.maximum(best, dot)
            return (best * _GAIN).reshape(x.shape)
