"""A tiny stand-in survival model honouring the SurvivalOutput contract, for explainer and CLI tests.

Cubelets of ``patch_size`` voxels are embedded by a strided convolution whose first channel is the cubelet's mean
intensity; two residual 3x3x3 blocks follow; the per-cubelet survival time is ``loc = 50 - 40 * tokens[0]`` plus a
small random term, and a softmin over valid cubelets gives p and pred. A bright sphere is therefore a short-survival
region, so the head's p map must land on it — a check that heatmaps are aligned with the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from survival3d.contracts import SurvivalOutput


class TinySurvivalModel(nn.Module):
    def __init__(self, *, patch_size: int = 4, channels: int = 6, depth: int = 2, beta: float = 0.5, n_num: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.beta = beta
        self.embed = nn.Conv3d(1, channels, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(nn.Conv3d(channels, channels, 3, padding=1) for _ in range(depth))
        self.loc_head = nn.Conv3d(channels, 1, 1)
        self.film = nn.Linear(n_num, channels)
        with torch.no_grad():
            self.embed.weight.mul_(0.1)
            self.embed.weight[0].fill_(1.0 / patch_size**3)
            self.embed.bias.zero_()
            for b in self.blocks:
                b.weight.mul_(0.05)
                b.weight[0].zero_()
                b.bias.zero_()
            self.loc_head.weight.mul_(0.2)
            self.loc_head.weight[0, 0] = -40.0
            self.loc_head.bias.fill_(50.0)
            self.film.weight.mul_(0.01)

    def forward(self, image, cov_num=None, cov_cat=None, lung_mask=None):
        pad = [p for s in reversed(image.shape[2:]) for p in (0, (-s) % self.patch_size)]
        x = self.embed(F.pad(image, pad))
        if cov_num is not None:
            x = x * (1 + self.film(cov_num)[..., None, None, None])
        feats = {"embed": x}
        for i, blk in enumerate(self.blocks):
            x = x + blk(F.gelu(x))
            feats[f"block{i}"] = x
        feats["tokens"] = x
        loc = self.loc_head(x)
        if lung_mask is not None:
            frac = F.avg_pool3d(F.pad(lung_mask.float(), pad), self.patch_size)
            valid = frac >= 0.5
            valid = valid | ~valid.flatten(1).any(1).view(-1, 1, 1, 1, 1)
        else:
            valid = torch.ones_like(loc, dtype=torch.bool)
        logits = torch.where(valid, -self.beta * loc, torch.full_like(loc, -1e9))
        p = torch.softmax(logits.flatten(1), 1).view_as(loc) * valid
        pred = (p * loc).flatten(1).sum(1)
        return SurvivalOutput(pred=pred, risk=-pred, p=p, loc=loc, valid=valid,
                              reg_loss=pred.new_zeros(()), features=feats)


def sphere_case(size=16, centre=(5, 10, 6), radius=3.0, with_lung=True):
    """(1, 1, D, H, W) image with a bright sphere, its mask and a lung mask (a big box leaving a margin)."""
    d = torch.arange(size, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(d, d, d, indexing="ij")
    mask = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2
    image = 0.1 + 0.8 * mask.float() + 0.02 * torch.rand(size, size, size)
    lung = torch.zeros(size, size, size, dtype=torch.bool)
    lung[1:-1, 1:-1, 1:-1] = True
    batch = {"image": image[None, None], "mask": mask[None, None].float(), "cov_num": torch.randn(1, 2),
             "time": torch.tensor([10.0]), "event": torch.tensor([1]), "id": ["case0"]}
    if with_lung:
        batch["lung_mask"] = lung[None, None].float()
    return batch
