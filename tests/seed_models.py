"""The PyTorch modules the two seed prompts fuse (KernelBench level 2, problems 70 and
53), written here by hand: the independent check of kgen's seed specs -- same
parameters under the same seed, same outputs within the issue's tolerances."""

from __future__ import annotations

import torch
from torch import nn


class GemmSigmoidResidual(nn.Module):
    """Seed 001: x = gemm(x); return x + scaling_factor * sigmoid(x)."""

    def __init__(self, input_size: int, hidden_size: int, scaling_factor: float = 2.0) -> None:
        super().__init__()
        self.gemm = nn.Linear(input_size, hidden_size)
        self.scaling_factor = scaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gemm(x)
        original_x = x
        x = torch.sigmoid(x)
        x = x * self.scaling_factor
        return x + original_x


class GemmScaleHardtanhGelu(nn.Module):
    """Seed 003: gelu(hardtanh(gemm(x) * scaling_factor)), exact (erf) GELU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scaling_factor: float = 0.5,
        hardtanh_min: float = -2.0,
        hardtanh_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.gemm = nn.Linear(in_features, out_features)
        self.scaling_factor = scaling_factor
        self.hardtanh = nn.Hardtanh(min_val=hardtanh_min, max_val=hardtanh_max)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gemm(x)
        x = x * self.scaling_factor
        x = self.hardtanh(x)
        return self.gelu(x)


# spec name -> (PyTorch module, constructor arguments after the sizes)
SEEDS = {
    "gemm_sigmoid_residual": (GemmSigmoidResidual, (2.0,)),
    "gemm_scale_hardtanh_gelu": (GemmScaleHardtanhGelu, (0.5, -2.0, 2.0)),
}
