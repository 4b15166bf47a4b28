"""Hand-written Triton math the epilogue ops lower to (used by `ops` and `emit`).

Each helper is a `@triton.jit` function emitted into a generated module only if an op
of its spec needs it (with the helpers it calls). All take and return fp32 and are
written to be stable for every finite input -- no overflow to Inf or NaN where the
true result is finite -- and to propagate NaN the way torch does: comparisons with
NaN are false, so every `tl.where` below is ordered to let NaN fall through to an
arithmetic branch. `tl.maximum`/`tl.minimum` drop NaN and are never used.

Formulas and their checks: shared/notes/triton-facts.md ("Math available in tl").
Accuracy targets: a few fp32 ulps, relative, away from the op's zeros; absolute
near them. tests/test_numerics.py checks every helper against torch in float64.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Helper:
    name: str
    source: str
    deps: tuple[str, ...] = ()


_HELPERS = [
    Helper(
        "_sigmoid",
        """
@triton.jit
def _sigmoid(x):
    # exp(-|x|) never overflows; for x < 0 use e / (1 + e) so tiny results keep
    # their relative precision instead of cancelling in 1 - 1 / (1 + e).
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    return tl.where(x >= 0.0, r, e * r)
""",
    ),
    Helper(
        "_tanh",
        """
@triton.jit
def _tanh(x):
    # (1 - e) / (1 + e) with e = exp(-2|x|) cannot overflow; below |x| = 0.125 its
    # cancellation costs bits, so use the odd Taylor polynomial there (error < 2e-9).
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    p = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    return tl.where(a < 0.125, p, tl.where(x < 0.0, -t, t))
""",
    ),
    Helper(
        "_log1p",
        """
@triton.jit
def _log1p(x):
    # log(1 + x) loses relative precision for small |x|; below 0.1 use the series
    # to x^7 (relative error < 2e-8). Callers pass x > -1.
    p = x * (1.0 + x * (-1.0 / 2.0 + x * (1.0 / 3.0 + x * (-1.0 / 4.0 + x * (
        1.0 / 5.0 + x * (-1.0 / 6.0 + x * (1.0 / 7.0)))))))
    return tl.where(tl.abs(x) < 0.1, p, tl.log(1.0 + x))
""",
    ),
    Helper(
        "_expm1",
        """
@triton.jit
def _expm1(x):
    # exp(x) - 1 cancels for small |x|; below 0.5 use the series to x^8
    # (relative error < 2e-7).
    p = x * (1.0 + x * (1.0 / 2.0 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (
        1.0 / 120.0 + x * (1.0 / 720.0 + x * (1.0 / 5040.0 + x * (1.0 / 40320.0))))))))
    return tl.where(tl.abs(x) < 0.5, p, tl.exp(x) - 1.0)
""",
    ),
    Helper(
        "_softplus",
        """
@triton.jit
def _softplus(x, beta, threshold):
    # torch: x where beta * x > threshold, else log1p(exp(beta * x)) / beta, computed
    # as max(z, 0) + log1p(exp(-|z|)) so exp never overflows.
    z = x * beta
    sp = tl.where(z > 0.0, z, 0.0) + _log1p(tl.exp(-tl.abs(z)))
    return tl.where(z > threshold, x, sp / beta)
""",
        ("_log1p",),
    ),
    Helper(
        "_logsigmoid",
        """
@triton.jit
def _logsigmoid(x):
    # min(x, 0) - log1p(exp(-|x|)): no overflow, full precision in both tails.
    return tl.where(x < 0.0, x, 0.0) - _log1p(tl.exp(-tl.abs(x)))
""",
        ("_log1p",),
    ),
    Helper(
        "_clamp",
        """
@triton.jit
def _clamp(x, lo, hi):
    # torch.clamp: min(max(x, lo), hi), so hi wins when lo > hi; NaN in x, lo or hi
    # gives NaN.
    # (lo and hi may be constants: `lo != lo` is then a plain bool, which where takes)
    t = tl.where(x < lo, lo, x)
    t = tl.where(t > hi, hi, t)
    return tl.where(lo != lo, lo, tl.where(hi != hi, hi, t))
""",
    ),
    Helper(
        "_minimum",
        """
@triton.jit
def _minimum(x, v):
    # torch.minimum: NaN in either operand gives NaN. (Nested wheres, not `|`: the
    # interpreter cannot `|` a [1, N] mask with a scalar one.)
    return tl.where(x != x, x, tl.where(x < v, x, v))
""",
    ),
    Helper(
        "_maximum",
        """
@triton.jit
def _maximum(x, v):
    # torch.maximum: NaN in either operand gives NaN (see _minimum).
    return tl.where(x != x, x, tl.where(x > v, x, v))
""",
    ),
    Helper(
        "_gelu",
        """
@triton.jit
def _gelu(x):
    # exact GELU (F.gelu's default): x * Phi(x), Phi(x) = erfc(-x / sqrt(2)) / 2.
    # 1 + erf(x / sqrt(2)) cancels for x < 0 (torch's fp32 gelu loses every digit below
    # x = -5); erfc's Chebyshev fit from Numerical Recipes (erfcc, relative error
    # < 1.2e-7 everywhere) does not, and serves x >= 0 as Phi(x) = 1 - Phi(-x):
    # one exp and one division for either sign.
    z = tl.abs(x) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.5 * z)
    p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
        -0.82215223 + t * 0.17087277))))))))
    phi_neg = 0.5 * t * tl.exp(p - z * z)  # Phi(-|x|)
    return x * tl.where(x >= 0.0, 1.0 - phi_neg, phi_neg)
""",
    ),
    Helper(
        "_gelu_erf",
        """
@triton.jit
def _gelu_erf(x):
    # exact GELU as F.gelu computes it in fp32, x (1/2 + erf(x / sqrt(2)) / 2): for x < 0
    # the sum cancels, so the error is absolute (|x| / 2 times erf's, a few ulps of 1,
    # at most where x is about -5; below -5.5 the result is 0), but it is cheap: on the
    # H100, gelu+softmax at 1024x8192x8192 fp16 ran 221 us with it, 235 with _gelu.
    # Only for values that feed softmaxes alone (ops.absolute_forms).
    return x * (0.5 + 0.5 * tl.erf(x * 0.7071067811865476))
""",
    ),
    Helper(
        "_gelu_tanh",
        """
@triton.jit
def _gelu_tanh(x):
    # F.gelu(x, approximate="tanh") = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))),
    # rewritten with 0.5 (1 + tanh(u)) = sigmoid(2 u), which does not cancel for x < 0.
    return x * _sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
""",
        ("_sigmoid",),
    ),
    Helper(
        "_elu",
        """
@triton.jit
def _elu(x, alpha):
    # torch returns x itself for x >= 0, -0.0 included: elu(0, alpha) is 0 even for an
    # infinite or NaN alpha, where alpha * expm1(0) would be NaN.
    return tl.where(x >= 0.0, x, alpha * _expm1(x))
""",
        ("_expm1",),
    ),
    Helper(
        "_celu",
        """
@triton.jit
def _celu(x, alpha):
    # torch: x for x >= 0 (see _elu), else alpha * expm1(x / alpha). For |u| = |x / alpha|
    # below 0.5 that is x * expm1(u) / u, by the series of _expm1: u may underflow
    # (x = -1e-30, alpha = 1e30) where the result, about x, does not. `alpha * 0.0` keeps
    # torch's NaN for an infinite alpha (Inf * expm1(-0.0)).
    u = x / alpha
    p = 1.0 + u * (1.0 / 2.0 + u * (1.0 / 6.0 + u * (1.0 / 24.0 + u * (
        1.0 / 120.0 + u * (1.0 / 720.0 + u * (1.0 / 5040.0 + u * (1.0 / 40320.0)))))))
    small = x * p + alpha * 0.0
    return tl.where(x >= 0.0, x, tl.where(tl.abs(u) < 0.5, small, alpha * (tl.exp(u) - 1.0)))
""",
    ),
    Helper(
        "_hardsigmoid",
        """
@triton.jit
def _hardsigmoid(x):
    # torch: relu6(x + 3) / 6
    return _clamp(x + 3.0, 0.0, 6.0) * (1.0 / 6.0)
""",
        ("_clamp",),
    ),
]

HELPERS: dict[str, Helper] = {h.name: h for h in _HELPERS}


def closure(names: set[str]) -> list[Helper]:
    """The helpers named and everything they call, callees first, in a stable order."""
    ordered: list[Helper] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        helper = HELPERS[name]
        for dep in helper.deps:
            visit(dep)
        ordered.append(helper)

    for name in sorted(names):
        visit(name)
    return ordered
