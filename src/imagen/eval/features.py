"""Feature extractors for FID / KID (Heusel et al., 2017; Binkowski et al., 2018), as torchmetrics takes them.

Imagen reports FID-30K with Inception V3 features (§4.2). Inception's weights are not reachable offline, so the
extractor is pluggable (`conf/features/`) and every output names the one used: FIDs from different extractors
are not comparable. Each extractor is an nn.Module mapping images (N, 3, H, W) float in [0, 1] (torchmetrics'
`normalize=True` convention) to features (N, d), with `num_features` and a `name`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagen.data.shapes import BACKGROUND, DEFAULT_COLORS
from imagen.data.vocab import PALETTE


class ShapesFeatures(nn.Module):
    """A weight-free extractor for the shapes world (hand-written: no pretrained network knows these images).

    At 32x32: soft membership of every pixel in each palette colour, the background and "off-palette"
    (Gaussian kernel on RGB distance, width `sigma`), average-pooled on a 4x4 grid (where each colour is);
    the foreground fraction on an 8x8 grid (layout and coarse shape); a 4-bin soft histogram of the
    foreground's gradient magnitude (edge sharpness: blur and noise move it); the fraction of saturated
    pixel values (thresholding's artefact, §2.3); per-channel mean and standard deviation. All in [0, 1].
    """

    name = "shapes-v1"

    def __init__(self, colors: list[str] | None = None, sigma: float = 0.12, size: int = 32):
        super().__init__()
        refs = [PALETTE[c] for c in (colors or DEFAULT_COLORS)] + [BACKGROUND]
        self.register_buffer("refs", torch.tensor(refs, dtype=torch.float32) / 255.0)  # (K, 3)
        self.register_buffer("edge_bins", torch.tensor([0.05, 0.2, 0.45, 0.8]))
        self.sigma, self.size = sigma, size
        k = len(refs) + 1  # + off-palette
        self.num_features = k * 16 + 64 + len(self.edge_bins) + 1 + 6

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        b = x.shape[0]
        d2 = ((x.unsqueeze(1) - self.refs.view(1, -1, 3, 1, 1)) ** 2).sum(2)  # (B, K, S, S)
        member = torch.exp(-d2 / (2 * self.sigma**2))
        other = (1 - member.sum(1, keepdim=True)).clamp(min=0)
        maps = torch.cat([member, other], 1)  # (B, K+1, S, S)
        where = F.adaptive_avg_pool2d(maps, 4).flatten(1)  # (B, (K+1)*16)
        fg = 1 - member[:, -1:]  # (B, 1, S, S): not background
        layout = F.adaptive_avg_pool2d(fg, 8).flatten(1)  # (B, 64)
        gx, gy = fg[..., :, 1:] - fg[..., :, :-1], fg[..., 1:, :] - fg[..., :-1, :]
        grad = torch.sqrt(gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2).flatten(1)  # (B, (S-1)^2)
        edges = torch.exp(-((grad.unsqueeze(-1) - self.edge_bins) ** 2) / 0.02).mean(1)  # (B, 4)
        saturated = ((x <= 1 / 255) | (x >= 254 / 255)).float().flatten(1).mean(1, keepdim=True)
        stats = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)  # (B, 6)
        return torch.cat([where, layout, edges, saturated, stats], 1).view(b, -1)


class InceptionFeatures(nn.Module):
    """InceptionV3 pool features (2048-d), the paper's FID network, through torchmetrics (torch-fidelity's
    port of the TF weights). Needs `pip install torch-fidelity` and its weights (downloaded on first use, or
    `weights_path=` a local copy)."""

    name = "inception-v3-compat-2048"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
            )
        except (ImportError, ModuleNotFoundError, RuntimeError, OSError) as err:
            raise OSError(
                f"features=inception needs torch-fidelity and InceptionV3 weights ({err}); install it with "
                "`pip install torch-fidelity` and give features.weights_path=<pt_inception weights>, or "
                "use features=shapes offline"
            ) from None
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.clamp(0, 1) * 255).round().to(torch.uint8)).view(x.shape[0], -1)
