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
    # e = exp(-|x|) never overflows; 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0, so
    # tiny results keep their relative precision (not 1 / (1 + e^-x): past x = -88.7,
    # e^-x is Inf and x * sigmoid(x) would be 0 where it is a normal number). The
    # numerator is selected before the one division.
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0.0, 1.0, e) / (1.0 + e)
""",
    ),
    Helper(
        "_tanh",
        """
@triton.jit
def _tanh(x):
    # (1 - e) / (1 + e) with e = exp(-2|x|) cannot overflow. 1 - e cancels for small
    # |x|: e's own error (ex2.approx: 2^-22.5 relative on the GPU) grows by
    # e / (1 - e), so below |x| = 0.55 (e > 1/3: at most 2x) use x + x^3 q(x^2), q a
    # least-squares fit on [0, 0.55] (1.0 unit of 2^-24 in fp32, measured).
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    s = x * x
    q = -0.3333333134651184 + s * (0.13333110511302948 + s * (-0.0539088100194931 + s * (
        0.021306157112121582 + s * -0.0066049243323504925)))
    return tl.where(a < 0.55, x + x * s * q, tl.where(x < 0.0, -t, t))
""",
    ),
    Helper(
        "_log1p",
        """
@triton.jit
def _log1p(x):
    # log(1 + x) for 0 <= x <= 1 only (callers pass exp(-|z|)): x p(x), p a degree-9
    # least-squares fit of log1p(x) / x on [0, 1] -- no log, no select, relative error
    # 2.3 units of 2^-24 in fp32 (measured, rounding every step; the GPU fuses).
    return x * (1.0 + x * (-0.49999889731407166 + x * (0.3332967162132263 + x * (
        -0.24951240420341492 + x * (0.1966138631105423 + x * (-0.15264321863651276 + x * (
        0.10534701496362686 + x * (-0.05628658086061478 + x * (0.019496649503707886 + x * (
        -0.0031659638043493032))))))))))
""",
    ),
    Helper(
        "_expm1",
        """
@triton.jit
def _expm1(x):
    # exp(x) - 1 for x <= 0 only (the callers' x < 0 branch). It cancels near 0: above
    # -0.5 use x p(x), p a degree-5 least-squares fit of expm1(x) / x on [-0.5, 0]
    # (1.7 units of 2^-24 in fp32, measured); below, exp's error grows by at most
    # e^x / (1 - e^x) < 1.6.
    p = x * (1.0 + x * (0.4999997913837433 + x * (0.16666221618652344 + x * (
        0.041628915816545486 + x * (0.008186997845768929 + x * 0.0011213280959054828)))))
    return tl.where(x > -0.5, p, tl.exp(x) - 1.0)
""",
    ),
    Helper(
        "_silu",
        """
@triton.jit
def _silu(x):
    # x * sigmoid(x) as (x * (1 or e)) / (1 + e), e = exp(-|x|) (see _sigmoid): one
    # exp, one division. x = -Inf gives -Inf * 0 = NaN, as torch's does.
    e = tl.exp(-tl.abs(x))
    return x * tl.where(x >= 0.0, 1.0, e) / (1.0 + e)
""",
    ),
    Helper(
        "_mish",
        """
@triton.jit
def _mish(x):
    # x tanh(log(1 + e)) = x n / (n + 2), n = (1 + e)^2 - 1 = e (e + 2), e = e^x: one exp
    # and one division, nothing cancels (n >= 0). Past x = 20, n / (n + 2) is 1 in fp32
    # (as torch's softplus threshold makes it), so e^x is taken at min(x, 20), which
    # cannot overflow; NaN falls through to x * 1.
    e = tl.exp(tl.where(x < 20.0, x, 20.0))
    n = e * (e + 2.0)
    return x * (n / (n + 2.0))
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
    # below 0.5 that is x * p(u), p a degree-6 least-squares fit of expm1(u) / u on
    # [-0.5, 0.5] (1.8 units of 2^-24 in fp32, measured; u > 0 where alpha < 0): u may
    # underflow (x = -1e-30, alpha = 1e30) where the result, about x, does not.
    # `alpha * 0.0` keeps torch's NaN for an infinite alpha (Inf * expm1(-0.0)).
    u = x / alpha
    p = 1.0 + u * (0.5000000596046448 + u * (0.16666662693023682 + u * (
        0.041665323078632355 + u * (0.00833369791507721 + u * (0.0013997219502925873 + u * (
        0.00019824178889393806))))))
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
