"""The MURA network: torchvision's DenseNet-169 with one logit and a class activation map.

One forward pass gives both outputs. With ``F`` the final feature maps (after DenseNet's last
batch norm and the ReLU that torchvision applies before pooling), ``w`` and ``b`` the single-logit
classifier's weights and bias:

    logit = w . mean_xy(F) + b            (global average pooling, then the linear layer)
    cam   = sum_c w_c F_c                 (Zhou et al. 2016; one value per feature-map cell)

so ``mean_xy(cam) + b == logit`` exactly (up to floating-point rounding): the map is the logit's
decomposition over the image. The raw map is returned at feature resolution (10 x 10 for a 320
input); ``upsample_cam`` scales it to any image size when it is drawn.

Parameter names match torchvision's ``densenet169`` with its classifier replaced by
``nn.Linear(1664, 1)``, so state dicts from the usual MURA reproductions load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet169


class MuraDenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        backbone = densenet169(weights=None)
        self.features = backbone.features
        self.classifier = nn.Linear(backbone.classifier.in_features, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) to logits (N,) and raw class activation maps (N, h, w)."""
        features = F.relu(self.features(images))
        pooled = features.mean(dim=(2, 3))
        logits = self.classifier(pooled).squeeze(1)
        cams = torch.einsum("nchw,c->nhw", features, self.classifier.weight[0].to(features.dtype))
        return logits, cams


def upsample_cam(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A raw map (h, w) scaled bilinearly to (height, width)."""
    return F.interpolate(
        cam[None, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """Positive evidence only, scaled to [0, 1] (all zeros when there is none)."""
    positive = cam.clamp(min=0)
    peak = positive.max()
    return positive / peak if peak > 0 else positive
