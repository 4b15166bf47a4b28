"""How a generated kernel's output is judged: every tolerance lives here, with its reason.

`check(kernel, out, x, weight, ..., **floats)` compares a kernel's output with the
float64 oracle (`kgen.reference`) and returns a `Mismatch` for the worst element, or
None. The exact answer is f(acc): the epilogue f, in float64 with fp32's range (what
overflows in the kernel overflows here too, and what underflows to zero does), of the
exact GEMM acc. A correct kernel may differ from it in three ways, each bounded on its
own:

1. **The GEMM.** fp32 accumulation -- and, for fp32 operands, the rounding of what the
   tensor cores see -- moves acc by at most
       delta = LAMBDA * sqrt(K) * u * (|x| @ |w|) + K * UNDERFLOW,
   the probabilistic bound for a K-term dot product with unit roundoff u (Higham &
   Mary, SIAM J. Sci. Comput. 41(5), 2019; LAMBDA = 4 holds with probability
   > 1 - 1e-6 per element), plus what products and sums below fp32's normal range
   lose, which is absolute, not relative: up to UNDERFLOW = 2^-126 each when the
   hardware flushes subnormals to zero (an epilogue that scales acc by 1e38 shows it).
   Through f that allows (a) anything between the least and the greatest finite f at
   HULL_STEPS: HULL_POINTS evenly spaced points of [acc - delta, acc + delta] (the ends
   included; f need not be monotonic there -- GELU has a minimum at -0.75, and TF32's
   delta can span it) and four close to acc (f may be NaN in part of the range), which
   places a jump of `where` or `relu` inside the bound, and (b) |df/dacc| * delta
   more, which covers a kink between them (abs, sqrt near 0) and what lies between two
   of the points.
2. **The epilogue's fp32 arithmetic.** A first-order running error bound: every value
   the epilogue computes or reads may be off by its op's bound (`OpDef.ulps`) units of
   fp32 roundoff, relative (EPILOGUE_ULPS for a value no op computes); each error
   reaches the output scaled by the derivative of the output with respect to that
   value. One backward pass of the float64 reference gives all of them for every
   element: sum_i |d out / d v_i| * |v_i| * ulps_i * 2^-24,
   with |v_i| raised by 2^-125 so that a value among fp32's subnormals, whose
   rounding is absolute (steps of 2^-149), may be off by ulps_i such steps.
   Tight (a few ulps) where the epilogue is well conditioned, wide where it amplifies
   rounding (cancellation, exp of a large value); deterministic, no luck involved.
   A value the kernel computes in its op's absolute-error form (`ops.absolute_forms`:
   GELU feeding a softmax) may be off by ulps_i units of max(|v_i|, 1) instead,
   as that form promises (tests/test_numerics.py holds it to that).
   One registry op counts as one rounding, but its Triton helper may round several
   times (mish is an exp, three products and sums and a division) and the GPU's exp,
   log and division are approximate: each op's own bound (`OpDef.ulps`, stated in
   LANGUAGE.md's "Accuracy"; EPILOGUE_ULPS = 8 for every op today, and for values no
   op computes) covers that; tests/test_numerics.py holds each op to its bound over
   the whole fp32 range.
3. **The store.** Rounding to the output dtype: one unit in its last place (relative,
   OUTPUT_RTOL), and an absolute floor at the scale of its smallest values.

An output is accepted if it lies in the hull of 1(a), rounded to the output dtype,
widened by 1(b), 2 and 3 -- or, where values fall below fp32's normal range, near
f(acc) evaluated with subnormals flushed to zero, as a GPU may. NaN or Inf is
accepted only where one of these evaluations gives it; NaN never passes otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kgen import reference
from kgen.ir import Gemm, Instr, Kernel, Kind, Role
from kgen.lower.steps import RowStep, plan_function, steps
from kgen.ops import FP32_MAX, OPS, RowKind, absolute_forms, fp32_range

# Unit roundoff of the GEMM, by what multiplies: 16-bit operands have exact products
# in fp32, so only fp32 accumulation counts; fp32 operands add the rounding of their
# precision mode's inputs (tf32 keeps 10 mantissa bits; tf32x3 drops lo * lo, about
# 2^-21; bf16x3 drops lo * lo of an 8-bit split, about 2^-15). The interpreter ignores
# input_precision and multiplies fp32 in IEEE fp32 (bf16x3 is split by the kernel
# itself, so it is bf16x3 there too).
GEMM_UNIT: dict[str, float] = {
    "16-bit": 2.0**-24,
    "ieee": 2.0**-24,
    "tf32x3": 2.0**-21,
    "bf16x3": 2.0**-15,
    "tf32": 2.0**-11,
}
LAMBDA = 4.0
UNDERFLOW = 2.0**-126  # fp32's smallest normal value
SUBNORMAL_STEP = 2.0**-125  # * 2^-24: 2^-149, the spacing of fp32's subnormals
HULL_POINTS = 9
# 1(a)'s points, in units of delta: HULL_POINTS evenly spaced over [-1, 1], and four
# close to acc, where f may be defined (finite) only near acc: 0 * tanh(acc / 0) is
# NaN wherever acc < 0, and a correct acc a little off the exact one must still pass
HULL_STEPS = (
    *(2 * i / (HULL_POINTS - 1) - 1 for i in range(HULL_POINTS)),
    *(-1 / 16, -1 / 64, 1 / 64, 1 / 16),
)
EPILOGUE_ULPS = 8.0

# One unit in the last place of the output dtype, relative; and an absolute floor at
# the scale of its smallest values (the GPU may flush fp32 subnormals to zero).
OUTPUT_RTOL: dict[torch.dtype, float] = {
    torch.float32: 2.0**-22,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
OUTPUT_ATOL: dict[torch.dtype, float] = {
    torch.float32: 1e-37,
    torch.float16: 2.0**-24,
    torch.bfloat16: 1e-37,
}

# The acceptance tolerances against PyTorch itself rather than the oracle:
# fp32 (default precision) vs PyTorch's fp32 result, as KernelBench-style harnesses
# check; 16-bit vs PyTorch computed in the same dtype, which rounds after every op
# where kgen rounds once.
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
    total: int

    def __str__(self) -> str:
        return (
            f"{self.count} of {self.total} elements outside the bound; worst at "
            f"{list(self.index)}: got {self.got!r}, exact {self.expected!r}, accepted "
            f"[{self.low!r}, {self.high!r}] +- {self.tolerance:.3g}"
        )


def gemm_unit(kernel: Kernel, dtype: torch.dtype, device: str) -> float:
    if dtype != torch.float32:
        return GEMM_UNIT["16-bit"]
    if device == "cpu" and kernel.precision != "bf16x3":
        return GEMM_UNIT["ieee"]
    return GEMM_UNIT[kernel.precision]


@dataclass(frozen=True)
class _Case:
    """A call's operands (detached, where they live: GPU or CPU), its exact accumulator
    and the bound `delta` on the kernel's error in it -- computed once per check."""

    operands: dict[str, Any]
    acc: torch.Tensor
    delta: torch.Tensor

    @staticmethod
    def of(kernel: Kernel, args: tuple[Any, ...], floats: dict[str, Any], device: str) -> _Case:
        bound = reference.bind(kernel, args, floats)
        operands = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in bound.items()}
        x, w = operands["x"], operands["weight"]
        acc = reference.gemm(kernel, x, w, torch.float64)
        magnitude = reference.gemm(kernel, x.abs(), w.abs(), torch.float64)
        unit = gemm_unit(kernel, x.dtype, device)
        K = x.shape[1]
        delta = LAMBDA * math.sqrt(max(K, 1)) * unit * magnitude + K * UNDERFLOW
        # An Inf or NaN acc comes from an Inf or NaN operand, which the kernel's fp32 GEMM
        # carries as float64 does: there is no rounding to allow for, and acc -+ delta
        # (Inf - Inf) would be NaN, which would let NaN pass where the answer is Inf.
        delta = torch.where(torch.isfinite(acc), delta, 0.0)
        return _Case(operands, acc, delta)


def _fp32_range(value: torch.Tensor, _instr: Instr | None = None) -> torch.Tensor:
    """float64 with fp32's range (kgen.ops.fp32_range), as a reference hook."""
    return fp32_range(value)


def evaluations(kernel: Kernel, *args: Any, device: str = "cuda", **floats: Any) -> torch.Tensor:
    """[2 + len(HULL_STEPS), M, N] float64: f(acc), then f at the points of 1(a) above,
    then f(acc) with subnormals flushed to zero."""
    return _evaluations(kernel, _Case.of(kernel, args, floats, device))


def _flush(value: torch.Tensor, _instr: Instr | None = None) -> torch.Tensor:
    """fp32's range on hardware that flushes subnormal results (below 2^-126) to zero.
    Scalars (params, constants) stay as given: an op's argument such as celu's alpha
    has no flushed meaning (torch refuses alpha = 0)."""
    value = _fp32_range(value)
    if value.dim() == 0:
        return value
    return torch.where(value.abs() < UNDERFLOW, value * 0.0, value)


def _evaluations(kernel: Kernel, case: _Case) -> torch.Tensor:
    accs = [case.acc] + [case.acc + t * case.delta for t in HULL_STEPS]
    values = [reference.epilogue(kernel, a, case.operands, _fp32_range) for a in accs]
    # the same with subnormals flushed, as GPUs and fused helpers may do: an
    # intermediate below 2^-126 (gelu's Phi(x) of x < -13) can become 0, and log(0)
    values.append(reference.epilogue(kernel, case.acc, case.operands, _flush))
    return torch.stack(values)


def error_bound(kernel: Kernel, *args: Any, device: str = "cuda", **floats: Any) -> torch.Tensor:
    """[M, N] float64: the first-order bounds 1(b) and 2 above, summed."""
    return _error_bound(kernel, _Case.of(kernel, args, floats, device))


def _rounding_scale(absolute: frozenset[int], value: torch.Tensor, instr: Instr) -> torch.Tensor:
    """What a value's ulps (`_ulps`) are units of: |v|, or max(|v|, 1) for a value in an
    absolute-error form."""
    size = value.detach().abs()
    return size.clamp(min=1.0) if instr.id in absolute else size


def _ulps(instr: Instr) -> float:
    """How many units of 2^-24 a value may be off: its op's own bound (`OpDef.ulps`,
    LANGUAGE.md's "Accuracy"), EPILOGUE_ULPS for anything else (loads, constants,
    row operations' results)."""
    op = OPS.get(instr.op)
    return op.ulps if op is not None else EPILOGUE_ULPS


def _error_bound(kernel: Kernel, case: _Case) -> torch.Tensor:
    acc = case.acc.clone().requires_grad_(True)
    terms: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    absolute = absolute_forms(kernel)

    def attach(value: torch.Tensor, instr: Instr) -> torch.Tensor:
        error = torch.zeros_like(acc, requires_grad=True)
        scale = _rounding_scale(absolute, value, instr).expand(acc.shape)
        terms.append((error, scale, _ulps(instr)))
        return value + error

    with torch.enable_grad():
        out = reference.epilogue(kernel, acc, case.operands, hook=attach)
        if out.requires_grad:
            out.sum().backward()  # type: ignore[no-untyped-call]
    gemm = torch.zeros_like(case.acc)
    if acc.grad is not None:
        gemm = (acc.grad.abs() * case.delta).nan_to_num(nan=0.0)
    rounding = torch.zeros_like(case.acc)
    for error, scale, ulps in terms:
        if error.grad is not None:
            # relative roundoff, and below fp32's normal range the absolute step of
            # its subnormals (2^-149 = 2^-24 * SUBNORMAL_STEP)
            size = scale + SUBNORMAL_STEP
            rounding += (error.grad.abs() * size).nan_to_num(nan=0.0) * ulps
    return gemm + rounding * 2.0**-24


def check(kernel: Kernel, out: torch.Tensor, *args: Any, **floats: Any) -> Mismatch | None:
    """Compare `out` = kernel(*args, **floats) with the oracle (see the module doc)."""
    dtype = out.dtype
    case = _Case.of(kernel, args, floats, out.device.type)
    shape = reference.output_shape(kernel, *case.acc.shape)
    if tuple(out.shape) != shape:
        raise AssertionError(f"output shape {list(out.shape)}, expected {list(shape)}")
    if out.numel() == 0:
        return None  # an empty result (M = 0 or N = 0) has nothing to be wrong
    if kernel.row_ops:
        exact, bound = _staged(kernel, case, dtype)
    else:
        exact, bound = _evaluations(kernel, case), _error_bound(kernel, case)
    rounded = exact.to(dtype).to(torch.float64)
    got = out.detach().to(torch.float64).to(exact.device).reshape(exact.shape[1:])

    finite = torch.isfinite(rounded)
    huge = torch.finfo(torch.float64).max
    low = torch.where(finite, rounded, huge).amin(0)
    high = torch.where(finite, rounded, -huge).amax(0)
    any_finite = finite.any(0)
    scale = torch.where(any_finite, torch.maximum(low.abs(), high.abs()), 0.0)
    tolerance = OUTPUT_ATOL[dtype] + OUTPUT_RTOL[dtype] * scale + bound

    in_hull = (
        torch.isfinite(got) & any_finite & (got >= low - tolerance) & (got <= high + tolerance)
    )
    nan_allowed = torch.isnan(got) & torch.isnan(rounded).any(0)
    inf_allowed = torch.isinf(got) & (rounded == got.unsqueeze(0)).any(0)
    ok = in_hull | nan_allowed | inf_allowed
    if bool(ok.all()):
        return None
    excess = torch.where(
        torch.isfinite(got) & any_finite,
        torch.maximum(low - got, got - high) - tolerance,
        math.inf,
    )
    excess = torch.where(ok, -math.inf, excess)
    flat = int(torch.argmax(excess.reshape(-1)))
    index = (flat // got.shape[1], flat % got.shape[1])
    return Mismatch(
        index=index,
        got=float(got[index]),
        expected=float(exact[0][index]),
        low=float(low[index]),
        high=float(high[index]),
        tolerance=float(tolerance[index]),
        count=int((~ok).sum()),
        total=got.numel(),
    )


def assert_matches_reference(kernel: Kernel, out: torch.Tensor, *args: Any, **floats: Any) -> None:
    mismatch = check(kernel, out, *args, **floats)
    if mismatch is not None:
        raise AssertionError(f"{kernel.name}: {mismatch}")


def assert_close_to_pytorch(
    out: torch.Tensor, expected: torch.Tensor, exact: torch.Tensor | None = None
) -> None:
    """The issue's acceptance check against PyTorch: allclose for the dtype; NaN fails.

    PyTorch in fp16/bf16 rounds after every op and kgen once, so where their results
    differ by more than the tolerance it can be PyTorch that is off (2 bf16 ulps at
    |y| ~ 2 exceed 1e-2 + 1e-2 |y|). Given `exact` (the float64 oracle), such an
    element passes only if kgen is at least as close to it as PyTorch is.
    """
    atol, rtol = PYTORCH_TOLERANCE[expected.dtype]
    got, want = out.double(), expected.double()
    close = torch.isclose(got, want, atol=atol, rtol=rtol)
    if exact is not None:
        truth = exact.double().to(got.device)
        close |= (got - truth).abs() <= (want - truth).abs()
    if not bool(close.all()):
        err = (got - want).abs().nan_to_num(nan=math.inf)
        raise AssertionError(
            f"not allclose(atol={atol}, rtol={rtol}) to PyTorch: max |diff| "
            f"{err.max().item():.3g}, {int((~close).sum())} of {got.numel()} elements off"
        )


# ---------------------------------------------------------------------------
# Row operations: the bound in stages
#
# A row operation mixes a row's (or segment's) values, so a per-element derivative no
# longer bounds how an error moves the result. With row operations the epilogue is
# checked in stages: the elementwise steps up to each row operation exactly as above
# (hull plus first-order terms, with the previous stage's value and radius in place of
# acc and delta), then each row operation maps its input's centre and radius to its
# output's: by intervals where it is monotone in each input (softmax, log_softmax,
# logsumexp: exp(x - lse) grows with x and falls with every other input), by
# Lipschitz constants for sums, means, maxima and minima, and for the norms by their
# first-order bound s (|dx_j| + mean|dx| + |y_j| mean(|y| |dx|)), doubled for what a
# first-order term misses. Each adds its own fp32 rounding (ROW_ULPS units plus
# log2 of the segment width, for the sums), and, where the row operation runs in two
# passes (kgen/lower/rows.py), one rounding of the stored relative value in the output dtype.
ROW_ULPS = 8.0


def _segments(x: torch.Tensor, step: RowStep) -> torch.Tensor:
    """[M, S, g]: the segments a row operation reduces (a pool drops the remainder)."""
    M, W = x.shape
    size = step.instr.size
    if step.whole or step.trivial:
        return x.reshape(M, 1, W)
    if step.rowdef.kind is RowKind.POOL:
        return x[:, : (W // size) * size].reshape(M, W // size, size)
    return x.reshape(M, size, W // size)


def _row_radius(
    step: RowStep,
    cx: torch.Tensor,
    rx: torch.Tensor,
    cy: torch.Tensor,
    operands: list[Any],
    out_dtype: torch.dtype,
    two_pass: bool,
) -> torch.Tensor:
    """A bound on |kernel - exact| at a row operation's output, given its input's
    exact value cx and radius rx ([M, W] or [M, 1]) and its exact output cy."""
    name, family = step.rowdef.name, step.rowdef.family
    u = 2.0**-24
    if step.trivial:
        if name in ("softmax", "log_softmax", "layernorm"):
            return torch.zeros_like(cy)
        return rx.expand_as(cy).clone()
    M, W = cx.shape
    x, r = _segments(cx, step), _segments(rx.expand_as(cx), step)
    width = x.shape[2]
    sums = math.log2(max(width, 2)) + ROW_ULPS
    shape = cy.shape
    if family == "exp":
        lo_in, hi_in = x - r, x + r
        lse_lo = torch.logsumexp(lo_in, dim=2, keepdim=True)
        lse_hi = torch.logsumexp(hi_in, dim=2, keepdim=True)
        m = x.amax(dim=2, keepdim=True)
        lse = torch.logsumexp(x, dim=2, keepdim=True)
        if name == "softmax":
            lo, hi = torch.exp(lo_in - lse_hi), torch.exp(hi_in - lse_lo)
            y = torch.exp(x - lse)
            own = y * ((x - m).abs() + sums) * u
            stored = OUTPUT_RTOL[out_dtype] * y if two_pass else 0.0
        elif name == "log_softmax":
            lo, hi = lo_in - lse_hi, hi_in - lse_lo
            y = x - lse
            own = ((x - m).abs() + y.abs() + sums) * u
            stored = 2 * OUTPUT_RTOL[out_dtype] * y.abs() if two_pass else 0.0
        else:
            lo, hi, y = lse_lo, lse_hi, lse
            own = (m.abs() + sums) * u
            stored = 0.0
        radius = torch.maximum(hi - y, y - lo) + own + stored
    elif family == "moments":
        mean = x.mean(dim=2, keepdim=True)
        var = x.var(dim=2, unbiased=False, keepdim=True)
        eps = (
            float(operands[0])
            if not isinstance(operands[0], torch.Tensor)
            else float(operands[0].reshape(-1)[0])
        )
        s = 1.0 / torch.sqrt(var + eps)
        y = (x - mean) * s
        first = s * (
            r + r.mean(dim=2, keepdim=True) + y.abs() * (y.abs() * r).mean(dim=2, keepdim=True)
        )
        own = (y.abs() + x.abs().amax(dim=2, keepdim=True) * s) * sums * u
        stored = 0.0
        if two_pass:
            deviation = (x - mean).abs()
            stored = OUTPUT_RTOL[out_dtype] * (deviation + deviation.amax(dim=2, keepdim=True)) * s
        radius = 2 * first + own + stored
        # the kernel's fp32 sum of squared deviations can overflow where float64's does not
        overflow = ((x - mean) ** 2).sum(dim=2, keepdim=True) > FP32_MAX / 4
        radius = torch.where(overflow, math.inf, radius).reshape(M, W)
        if step.rowdef.affine:
            weight, bias = (t.reshape(1, -1) for t in operands[1:3])
            radius = radius * weight.abs() + (cy.abs() + bias.abs()) * ROW_ULPS * u
        return radius.reshape(shape)
    elif family == "sum":
        total = r.sum(dim=2, keepdim=True)
        own = x.abs().sum(dim=2, keepdim=True) * sums * u
        radius = total + own
        if name != "row_sum":
            radius = radius / width
    else:
        radius = r.amax(dim=2, keepdim=True)
    return (
        radius.reshape(shape)
        if radius.numel() == cy.numel()
        else radius.expand(M, -1, width).reshape(shape)
    )


class _Stage:
    """The elementwise values from `start` (an instruction, with a given value) to
    `result`, as functions of the start value."""

    def __init__(self, kernel: Kernel, case: _Case, start: int, result: int) -> None:
        self.kernel, self.case, self.start, self.result = kernel, case, start, result

    def at(self, value: torch.Tensor, hook: Any = _fp32_range) -> torch.Tensor:
        values = reference.trace(
            self.kernel,
            self.case.acc,
            self.case.operands,
            hook,
            override=(self.start, value),
            stop=self.result,
        )
        out = values[self.result]
        if not isinstance(out, torch.Tensor):
            out = torch.tensor(out, dtype=torch.float64, device=self.case.acc.device)
        return out

    def hull(
        self, centre: torch.Tensor, radius: torch.Tensor, shape: tuple[int, ...]
    ) -> torch.Tensor:
        starts = [centre] + [centre + t * radius for t in HULL_STEPS]
        return torch.stack([_fp32_range(self.at(s)).expand(shape) for s in starts])

    def bound(
        self, centre: torch.Tensor, radius: torch.Tensor, shape: tuple[int, ...]
    ) -> torch.Tensor:
        start = centre.detach().clone().requires_grad_(True)
        terms: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        absolute = absolute_forms(self.kernel)

        def attach(value: torch.Tensor, instr: Instr) -> torch.Tensor:
            target = torch.broadcast_shapes(value.shape, shape)  # type: ignore[no-untyped-call]
            error = torch.zeros(target, dtype=value.dtype, device=value.device, requires_grad=True)
            scale = _rounding_scale(absolute, value, instr).expand(target)
            terms.append((error, scale, _ulps(instr)))
            return value + error

        with torch.enable_grad():
            out = self.at(start, hook=attach)
            if out.requires_grad:
                out.sum().backward()  # type: ignore[no-untyped-call]
        total = torch.zeros(shape, dtype=torch.float64, device=centre.device)
        if start.grad is not None:
            total = total + (start.grad.abs() * radius).nan_to_num(nan=0.0).expand(shape)
        for error, scale, ulps in terms:
            if error.grad is not None and error.grad.shape == shape:
                total = total + (error.grad.abs() * scale).nan_to_num(nan=0.0) * ulps * 2.0**-24
        return total


def _staged(
    kernel: Kernel, case: _Case, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(evaluations, first-order bound) of the last stage, as `_evaluations` and
    `_error_bound` give them without row operations."""
    M, N = case.acc.shape
    split = plan_function(kernel)(N, 64)[0] if N > 0 else -1
    exact = reference.trace(kernel, case.acc, case.operands, _fp32_range)
    start, centre, radius = 0, case.acc, case.delta
    for step in steps(kernel):
        x_id = step.instr.args[0]
        cx = _as2d(exact[x_id], M)
        stage = _Stage(kernel, case, start, x_id)
        points = stage.hull(centre, radius, tuple(cx.shape))
        finite = torch.isfinite(points).all(0)
        spread = torch.maximum(points.amax(0) - cx, cx - points.amin(0))
        rx = spread + stage.bound(centre, radius, tuple(cx.shape))
        rx = torch.where(torch.isfinite(cx), torch.where(finite, rx, math.inf), 0.0)
        cy = _as2d(exact[step.instr.id], M)
        operands = [exact[a] for a in step.instr.args[1:]]
        two_pass = step.index == split
        ry = _row_radius(step, cx, rx, cy, operands, out_dtype, two_pass)
        start, centre, radius = step.instr.id, cy, torch.where(torch.isfinite(cy), ry, 0.0)
    columns = reference.output_shape(kernel, M, N)
    shape = (M, columns[1]) if len(columns) == 2 else (M, 1)
    stage = _Stage(kernel, case, start, kernel.result)
    return stage.hull(centre, radius, shape), stage.bound(centre, radius, shape)


def _as2d(value: Any, M: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() < 2:
        t = t.reshape(1, 1)
    return t.expand(M, t.shape[1]) if t.shape[0] == 1 else t


# ---------------------------------------------------------------------------
# Gradients
#
# A kernel's gradients (kgen.derive, the backward kernel, and the GEMMs dx = dz W,
# dW = dz^T x) are judged against torch.autograd of the float64 oracle, the way
# PyTorch's own are: per gradient tensor, the largest error may be at most
# GRAD_EAGER_FACTOR times the largest error of PyTorch's autograd of the same spec
# computed in the call's dtype (reference.evaluate with that dtype: the GEMM and
# every op rounded to it, as eager PyTorch computes), plus GRAD_ULPS units of the
# gradient's own dtype times its largest exact value. The first term is what a
# PyTorch user already accepts from autograd in that dtype (both round the saved
# pre-activation and the GEMMs' inputs to it); the second is a floor for gradients
# that eager happens to get exactly (a relu's), where kgen still rounds dz and sums
# the operands' partial gradients in another order. For an operand broadcast over the
# output (bias, vector params, learned scalars) that largest value is of the terms its
# gradient sums (`_gradient_terms`), as a sum's rounding is relative to them. A gradient with NaN or Inf where
# the exact one is finite fails.
#
# A third term for what the backward reads: the saved accumulator is off by the
# forward GEMM's error (the forward oracle's delta: bf16x3 and tf32 on the GPU are
# less accurate than fp32) and, in 16-bit calls, by its rounding to x's dtype (a
# unit, OUTPUT_RTOL), where
# eager rounds the pre-activation the same way but then computes each op rounded too.
# `_gradient_terms` evaluates the exact gradients at acc - delta and acc + delta
# (float64) and, in 16-bit calls, at acc rounded to x's dtype element by element (to
# nearest, and toward zero), and allows each one's largest move: dz's carried
# to dx and dW with absolute values, the bias's and other operands' gradients by their
# own move. A comparison (max, clamp, where) that the rounding can flip moves the
# gradient by its jump; one between two elements (a pool's window, a row's minimum)
# flips only where they move apart, which the rounded points show and a shift of
# every element by delta does not (row_pools in bf16, M=14 N=7 K=45, seed 65536: x's
# gradient 0.0325 off against 0.0065 allowed before the rounded points).
#
# And a fourth for the luck in the first: kgen's backward computes each output
# element's term of a gradient (dz, and the per-element terms a broadcast operand's
# gradient sums) in fp32, as eager fp32 autograd does, but rounds them differently, and
# where the terms are small differences of larger values (gated_residual's alpha: the
# difference of a SiLU and a GELU) eager's errors in a sum can cancel by chance where
# kgen's do not (seen: 6.3e-10 against 2 x 1.04e-10 allowed). So each term may also be
# off by GRAD_EAGER_FACTOR times eager fp32's own error in that term (float64 against
# fp32 autograd of the reference at the same fp32 inputs), carried to the gradients with
# absolute values, so that no sign luck enters. Small beside a 16-bit call's first term.
GRAD_EAGER_FACTOR = 2.0
GRAD_ULPS = 8.0


def _autograd(
    kernel: Kernel,
    args: Sequence[torch.Tensor],
    dout: torch.Tensor,
    dtype: torch.dtype,
    floats: dict[str, Any],
) -> list[torch.Tensor]:
    leaves = [a.detach().to(dtype).requires_grad_() for a in args]
    out = reference.evaluate(kernel, *leaves, dtype=dtype, **floats)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype), allow_unused=True)
    return [
        torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves, strict=True)
    ]


def _spread(kernel: Kernel, operands: dict[str, Any], M: int, N: int) -> dict[str, torch.Tensor]:
    """Float64 leaves for the tensor operands after x and the weight; those broadcast
    over the [M, N] output (the bias, vector params, learned scalars, [M] inputs) given
    as [M, N] copies, so that their gradients come per output element, unreduced."""
    leaves = {}
    for name, value in list(operands.items())[2:]:
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().double()
        pool = _used_after(kernel, name)
        if value.shape != (M, N) and kernel.operand(name).pool == 1 and pool:
            # as the reference broadcasts it ([1, N], [M, 1], []), copied out to the
            # [M, N // pool] values it meets
            shaped = reference._shaped(kernel, name, value, torch.float64)
            value = shaped.expand(M, N // pool).clone()
        leaves[name] = value.requires_grad_()
    return leaves


def _used_after(kernel: Kernel, name: str) -> int:
    """The pool of the [M, W] values an operand is combined with (1: the GEMM's
    columns), or 0 where it meets values of several (before and after a pool: it is
    left as it is, unspread)."""
    loads = {i.id for i in kernel.body if i.op == "load" and i.attr == name}
    pools = {i.pool for i in kernel.body if loads.intersection(i.args) and i.kind is Kind.TILE}
    return pools.pop() if len(pools) == 1 else (1 if not pools else 0)


def _reduce(kernel: Kernel, name: str, term: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    """A per-element term of `_spread`'s leaf, summed to the operand's own shape."""
    if term.shape == arg.shape:
        return term
    kind = kernel.operand(name).kind
    if kind is Kind.COL:
        return term.sum(0).reshape(arg.shape)
    if kind is Kind.ROW:
        return term.sum(1).reshape(arg.shape)
    return term.sum().reshape(arg.shape)


def _gradient_terms(
    kernel: Kernel, args: Sequence[torch.Tensor], dout: torch.Tensor, floats: dict[str, Any]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Two allowances per gradient (see GRAD_EAGER_FACTOR's comment), float64:

    - how far the exact gradient moves when the accumulator the backward reads is off
      by what the forward may get wrong in it: the GEMM's error bound, plus a unit of
      x's dtype (OUTPUT_RTOL: Triton's interpreter truncates) where the accumulator is
      saved in a 16-bit dtype. Evaluated at
      acc - delta and acc + delta, so that a comparison the rounding can flip (max,
      clamp, where) moves the gradient by its jump; per output element, carried to dx,
      dW and the broadcast operands' sums with absolute values;
    - for the broadcast operands, the sum of the absolute values of the per-element
      terms their gradient adds up, the scale its rounding is relative to (None for x,
      the weight and [M, N] operands)."""
    device = args[0].device.type
    case = _Case.of(kernel, tuple(args), floats, device)
    M, N = case.acc.shape
    delta = case.delta
    if args[0].dtype != torch.float32:
        dtype = args[0].dtype
        delta = delta + case.acc.abs() * OUTPUT_RTOL[dtype] + OUTPUT_ATOL[dtype]
    names = list(_spread(kernel, case.operands, M, N))
    accs = [case.acc, case.acc + delta, case.acc - delta]
    if args[0].dtype != torch.float32:
        # the accumulator as saved, each element rounded on its own: a shift of all of
        # them by delta keeps every near tie between two (a window's max, a row's min)
        # as it was, where the rounding may flip it; rounded to nearest (the GPU), and
        # toward zero (Triton's interpreter truncates)
        near = case.acc.float().to(args[0].dtype)
        inward = torch.nextafter(near, torch.zeros_like(near))
        truncated = torch.where(near.double().abs() > case.acc.abs(), inward, near)
        accs += [near.double(), truncated.double()]
    grads = [_term_grads(kernel, point, case.operands, dout) for point in accs]
    moved = [
        torch.stack([(a - g).abs() for a in others]).amax(0).nan_to_num(nan=0.0)
        + GRAD_EAGER_FACTOR * e
        for g, *others, e in zip(*grads, _fp32_term_errors(kernel, case, dout), strict=True)
    ]
    dz = moved[0]
    x, w = case.operands["x"].double().abs(), case.operands["weight"].double().abs()
    linear = kernel.gemm is Gemm.LINEAR
    shifts = [dz @ (w if linear else w.T), dz.T @ x if linear else x.T @ dz]
    sizes: list[torch.Tensor | None] = [None, None]
    for name, shift, term, arg in zip(names, moved[1:], grads[0][1:], args[2:], strict=True):
        shifts.append(_reduce(kernel, name, shift, arg))
        sizes.append(None if term.shape == arg.shape else _reduce(kernel, name, term.abs(), arg))
    return shifts, sizes


def _term_grads(
    kernel: Kernel, acc: torch.Tensor, operands: dict[str, Any], dout: torch.Tensor
) -> list[torch.Tensor]:
    """Autograd of the reference at `acc`, in acc's dtype: the per-element gradient terms
    of the accumulator, then of `_spread`'s leaves (float64)."""
    M, N = acc.shape
    acc = acc.detach().clone().requires_grad_()
    leaves = {
        k: v.detach().to(acc.dtype).requires_grad_()
        for k, v in _spread(kernel, operands, M, N).items()
    }
    with torch.enable_grad():
        value = reference.epilogue(kernel, acc, {**operands, **leaves})
        inputs = [acc, *leaves.values()]
        grads = torch.autograd.grad(value, inputs, dout.to(acc.dtype), allow_unused=True)
    return [
        torch.zeros_like(i).double() if g is None else g.double()
        for g, i in zip(grads, inputs, strict=True)
    ]


def _fp32_term_errors(kernel: Kernel, case: _Case, dout: torch.Tensor) -> list[torch.Tensor]:
    """Eager fp32's error in each per-element term of the gradients (the accumulator's,
    then `_spread`'s leaves'): fp32 autograd of the reference against float64 autograd
    at the same fp32 values; 0 where either is not finite (an fp32 overflow allows
    nothing)."""
    found = []
    for dtype in (torch.float32, torch.float64):
        operands = {
            k: v.float().to(dtype) if isinstance(v, torch.Tensor) else v
            for k, v in case.operands.items()
        }
        found.append(_term_grads(kernel, case.acc.float().to(dtype), operands, dout))
    return [
        torch.where(torch.isfinite(a) & torch.isfinite(b), (a - b).abs(), 0.0)
        for a, b in zip(*found, strict=True)
    ]


def _flatten(
    kernel: Kernel,
    grads: Sequence[torch.Tensor],
    args: Sequence[torch.Tensor],
    dout: torch.Tensor,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """x's leading dimensions, and the same leading dimensions of `input` operands and
    of `dout` (and of their gradients), flattened to one: M rows."""
    lead = args[0].shape[:-1]
    M = math.prod(lead)
    inputs = {i for i, o in enumerate(kernel.tensors, 2 + kernel.has_bias) if o.role is Role.INPUT}

    def flat(i: int, t: torch.Tensor) -> torch.Tensor:
        if i == 0 or (i in inputs and t.shape[: len(lead)] == lead):
            return t.reshape(M, *t.shape[len(lead) :])
        return t

    return (
        [
            flat(i, g) if g.shape == a.shape else g
            for i, (g, a) in enumerate(zip(grads, args, strict=True))
        ],
        [flat(i, a) for i, a in enumerate(args)],
        dout.reshape(M, *dout.shape[len(lead) :]),
    )


def gradient_errors(
    kernel: Kernel,
    grads: Sequence[torch.Tensor],
    args: Sequence[torch.Tensor],
    dout: torch.Tensor,
    **floats: Any,
) -> list[str]:
    """What is wrong with `grads` (kgen's, one per tensor argument), as messages. `x`
    may be [*, K], with `input` operands and `dout` of the same leading shape (the
    generated function's contract): the oracle sees them flattened to M rows."""
    grads, args, dout = _flatten(kernel, grads, args, dout)
    exact = _autograd(kernel, args, dout, torch.float64, floats)
    eager = _autograd(kernel, args, dout, args[0].dtype, floats)
    moved, sizes = _gradient_terms(kernel, args, dout, floats)
    names = (
        ["x", "weight"] + (["bias"] if kernel.has_bias else []) + [t.name for t in kernel.tensors]
    )
    problems = []
    for name, got, want, pytorch, arg, shift, size in zip(
        names, grads, exact, eager, args, moved, sizes, strict=True
    ):
        if got.shape != arg.shape or got.dtype != arg.dtype:
            problems.append(
                f"{name}: gradient {got.dtype} {list(got.shape)}, not {arg.dtype} {list(arg.shape)}"
            )
            continue
        finite = torch.isfinite(want.to(arg.dtype))  # Inf is right past the dtype's range
        error = (got.double() - want).abs()
        if bool((~torch.isfinite(got) & finite).any()):
            problems.append(f"{name}: NaN or Inf where the exact gradient is finite")
            continue
        error = torch.where(finite, error, 0.0)
        size = want.abs() if size is None else torch.maximum(size, want.abs())
        scale = float(torch.where(finite, size, 0.0).max()) if want.numel() else 0.0
        pytorch_error = (
            float(torch.where(finite, (pytorch.double() - want).abs(), 0.0).max())
            if want.numel()
            else 0.0
        )
        allowed = GRAD_EAGER_FACTOR * pytorch_error + GRAD_ULPS * torch.finfo(arg.dtype).eps * scale
        error = error - shift  # what the forward GEMM's own error explains
        worst = float(error.max()) if error.numel() else 0.0
        if worst > allowed:
            problems.append(
                f"{name}: max |error| {worst:.3g} > {allowed:.3g} (PyTorch in {arg.dtype}: "
                f"{pytorch_error:.3g}; largest exact value {scale:.3g})"
            )
    return problems


def assert_gradients_match(
    kernel: Kernel,
    grads: Sequence[torch.Tensor],
    args: Sequence[torch.Tensor],
    dout: torch.Tensor,
    **floats: Any,
) -> None:
    problems = gradient_errors(kernel, grads, args, dout, **floats)
    if problems:
        raise AssertionError(f"{kernel.name}: " + "; ".join(problems))
