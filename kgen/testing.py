"""How a generated kernel's output is judged: every tolerance lives here, with its reason.

`check(kernel, out, x, weight, ..., **floats)` compares a kernel's output with the
float64 reference and returns a `Mismatch` describing the worst element, or None.

The exact answer is `f(acc)`: the epilogue f (float64) on the exact GEMM acc. A
correct kernel differs from it in three ways, each bounded separately:

1. **The GEMM.** fp32 accumulation, and for fp32 operands the rounding of the inputs
   the tensor cores see, give |acc_kernel - acc| <= delta, with
   delta = LAMBDA * sqrt(K) * u * (|x| @ |w|), the probabilistic bound for a
   K-term dot product with unit roundoff u (Higham & Mary, SIAM J. Sci. Comput. 2019;
   it holds with probability > 1 - 1e-6 per element for LAMBDA = 4). The error
   reaches the output through f, so the output may be anything between f(acc - delta)
   and f(acc + delta): we evaluate both (and the centre) and accept their hull.
   That is also where NaN or Inf may legitimately appear (log of an acc within delta
   of 0): only where one of those evaluations gives it.
2. **The epilogue in fp32.** The kernel's hand-written math has a few ulps of error;
   how much the epilogue amplifies fp32 rounding is measured by evaluating it in
   float32 with torch: SLACK * |f32(acc) - f64(acc)| on top of an absolute floor.
3. **The store.** Rounding to the output dtype: one unit in the last place of it.

NaN never passes unless one of the evaluations above is NaN at that element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kgen import reference
from kgen.ir import Kernel

# Unit roundoff of the GEMM, by what multiplies: 16-bit operands have exact products
# in fp32, so only the fp32 accumulation counts; fp32 operands add the rounding of
# their precision mode's inputs (tf32: 10-bit mantissa; tf32x3 drops lo*lo, ~2^-21;
# bf16x3 drops lo*lo of an 8-bit split, ~2^-15).
GEMM_UNIT: dict[str, float] = {
    "16-bit": 2.0**-24,
    "ieee": 2.0**-24,
    "tf32x3": 2.0**-21,
    "bf16x3": 2.0**-15,
    "tf32": 2.0**-11,
}
LAMBDA = 4.0

# One unit in the last place of the output dtype (relative), and an absolute floor for
# results near zero, where the epilogue's own few-ulp errors are relative to its
# intermediate values (O(1) here), not to the tiny result.
OUTPUT_RTOL: dict[torch.dtype, float] = {
    torch.float32: 2.0**-21,  # 4 ulps: our formulas vs torch's, both a few ulps off
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
OUTPUT_ATOL: dict[torch.dtype, float] = {
    torch.float32: 1e-6,
    torch.float16: 1e-6,
    torch.bfloat16: 1e-6,
}
SLACK = 4.0  # our fp32 epilogue may be this many times worse than torch's fp32 one

# The acceptance tolerances against PyTorch itself (not the float64 oracle):
# fp32 at the default precision vs PyTorch's fp32 result; 16-bit vs PyTorch in the
# same dtype (which rounds after every op, while kgen rounds once).
PYTORCH_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (1e-2, 1e-2),
}


@dataclass(frozen=True)
class Mismatch:
    index: tuple[int, ...]
    got: float
    expected: float
    low: float
    high: float
    tolerance: float
    count: int

    def __str__(self) -> str:
        return (
            f"{self.count} element(s) outside the bound; worst at {list(self.index)}: "
            f"got {self.got!r}, expected {self.expected!r} "
            f"(accepted [{self.low!r}, {self.high!r}] +- {self.tolerance:.3g})"
        )


def gemm_unit(kernel: Kernel, dtype: torch.dtype) -> float:
    return GEMM_UNIT[kernel.precision] if dtype == torch.float32 else GEMM_UNIT["16-bit"]


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).to(torch.float64)


def check(kernel: Kernel, out: torch.Tensor, *args: Any, **floats: Any) -> Mismatch | None:
    """Compare `out` = kernel(*args, **floats) with the float64 oracle (see module doc)."""
    operands = reference.bind(kernel, args, floats)
    x, w = operands["x"], operands["weight"]
    expected_shape = (x.shape[0], w.shape[0] if kernel.gemm.value == "linear" else w.shape[1])
    if tuple(out.shape) != expected_shape:
        raise AssertionError(f"output shape {list(out.shape)}, expected {list(expected_shape)}")
    out_dtype = out.dtype
    cpu = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in operands.items()}
    acc = reference.gemm(kernel, cpu["x"], cpu["weight"], torch.float64)
    absolute = reference.gemm(kernel, cpu["x"].abs(), cpu["weight"].abs(), torch.float64)
    K = x.shape[1]
    delta = LAMBDA * math.sqrt(max(K, 1)) * gemm_unit(kernel, x.dtype) * absolute
    centre = reference.epilogue(kernel, acc, cpu)
    evaluations = [
        centre,
        reference.epilogue(kernel, acc - delta, cpu),
        reference.epilogue(kernel, acc + delta, cpu),
    ]
    in_fp32 = reference.epilogue(kernel, acc.to(torch.float32), cpu).to(torch.float64)
    evaluations.append(in_fp32)
    rounded = torch.stack([_rounded(e, out_dtype) for e in evaluations])
    got = out.detach().cpu().to(torch.float64)

    finite = torch.isfinite(rounded)
    big = torch.finfo(torch.float64).max
    low = torch.where(finite, rounded, torch.full_like(rounded, big)).amin(0)
    high = torch.where(finite, rounded, torch.full_like(rounded, -big)).amax(0)
    any_finite = finite.any(0)
    scale = torch.maximum(low.abs(), high.abs())
    spread = (in_fp32 - centre).abs().nan_to_num(nan=0.0, posinf=0.0)
    tolerance = OUTPUT_ATOL[out_dtype] + OUTPUT_RTOL[out_dtype] * scale + SLACK * spread
    tolerance = torch.where(any_finite, tolerance, torch.zeros_like(tolerance))

    ok_finite = (
        torch.isfinite(got) & any_finite & (got >= low - tolerance) & (got <= high + tolerance)
    )
    ok_nan = torch.isnan(got) & torch.isnan(rounded).any(0)
    ok_inf = torch.isinf(got) & (rounded == got.unsqueeze(0)).any(0)
    ok = ok_finite | ok_nan | ok_inf
    if bool(ok.all()):
        return None
    bad = ~ok
    excess = torch.where(
        torch.isfinite(got) & any_finite,
        torch.maximum(low - got, got - high) - tolerance,
        torch.full_like(got, math.inf),
    )
    excess = torch.where(bad, excess, torch.full_like(got, -math.inf))
    flat = int(torch.argmax(excess.reshape(-1)))
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), got.shape))
    return Mismatch(
        index=index,
        got=float(got[index]),
        expected=float(centre[index]),
        low=float(low[index]),
        high=float(high[index]),
        tolerance=float(tolerance[index]),
        count=int(bad.sum()),
    )


def assert_matches_reference(kernel: Kernel, out: torch.Tensor, *args: Any, **floats: Any) -> None:
    mismatch = check(kernel, out, *args, **floats)
    if mismatch is not None:
        raise AssertionError(f"{kernel.name}: {mismatch}")


def assert_close_to_pytorch(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """The issue's acceptance check against a PyTorch computation: allclose, NaN never equal."""
    atol, rtol = PYTORCH_TOLERANCE[dtype]
    got, want = out.float(), expected.float()
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        err = (got - want).abs()
        raise AssertionError(
            f"not allclose(atol={atol}, rtol={rtol}): max |diff| {err.nan_to_num(math.inf).max().item():.3g}, "
            f"{int((~torch.isclose(got, want, atol=atol, rtol=rtol)).sum())} of {got.numel()} elements off"
        )
