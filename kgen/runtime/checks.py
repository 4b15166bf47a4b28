"""The argument checks of a call, made before any launch (LANGUAGE.md, "What a
generated module offers"): `TypeError` for a value of the wrong kind (not a tensor, an
unsupported dtype, a float param that is not a number), `ValueError` for a wrong shape
or device. Each message names the argument.

Shapes follow `nn.Linear`: `x` is `[*, K]`, and its leading dimensions `[*]` (M rows
in all) lead every per-row operand too: an `[M]` input is `[*]`, an `[M, N]` input is
`[*, N]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# An operand's kind (kgen.ir.Kind's values) -> the shape it must have, from the leading
# shape of x, N and its pool.
KINDS = ("tile", "col", "row", "scalar")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensor(name: str, t: object, shape: Sequence[int] | None, x: torch.Tensor) -> None:
    """A tensor argument: a torch.Tensor of a supported dtype, of `shape` (if given),
    on x's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        allowed = ", ".join(dtype_name(d) for d in DTYPES)
        raise TypeError(f"{name} has dtype {dtype_name(t.dtype)}; expected {allowed}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def check_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    return float(value)


def check_gemm(
    x: object, weight: object, linear: bool, interpret: bool
) -> tuple[tuple[int, ...], int, int, int]:
    """x `[*, K]` and weight (`[N, K]` for linear, `[K, N]` for matmul): (the leading
    shape of x, M = its product, N, K)."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    assert isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
    if x.dim() < 1:
        raise ValueError(f"x must be [*, K] (at least 1-D), got shape {list(x.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {list(weight.shape)}")
    check_tensor("x", x, None, x)
    if weight.dtype != x.dtype:
        raise TypeError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    check_tensor("weight", weight, None, x)
    if not interpret and x.device.type != "cuda":
        raise ValueError(
            f"x is on {x.device}; kgen kernels run on CUDA devices "
            "(or on the CPU with TRITON_INTERPRET=1 set before import)"
        )
    lead, K = tuple(x.shape[:-1]), x.shape[-1]
    if linear:
        N, K_w = weight.shape
        layout = "weight is [N, K]"
    else:
        K_w, N = weight.shape
        layout = "weight is [K, N]"
    if K_w != K:
        raise ValueError(
            f"x is [*, K] = {list(x.shape)} but {layout} = {list(weight.shape)}: K differs"
        )
    return lead, math.prod(lead), N, K


def operand_shape(kind: str, pool: int, lead: tuple[int, ...], N: int) -> tuple[int, ...]:
    """The shape a tensor operand of this kind must have."""
    if kind == "tile":
        return (*lead, N)
    if kind == "row":
        return lead
    if kind == "col":
        return (N if pool == 1 else N // pool,)
    return ()
