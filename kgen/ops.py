"""The op registry: everything kgen knows about each epilogue op, one entry per op.

An entry holds the op's name, its arguments (after `x`, the value it applies to) with
their defaults and the kind each accepts, a one-line doc, its torch reference (the
oracle, used by `kgen.reference`) and its Triton lowering (an expression over the
names of its arguments, used by kgen/lower/epilogue.py, with the `kgen.tlib` helpers it calls).
Adding an op is adding an entry here; the parser needs nothing, the analyzer reads
the signature, and the tests draw ops from this table.

Operators in expressions are ops too: `a + b` is `add(a, b)`, `-a` is `neg(a)`, and
the comparisons `< <= > >=` are the internal ops `lt le gt ge`, whose boolean
results only `where` may take.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kgen.ir import Instr, Kernel, Kind


class ArgType(enum.Enum):
    VALUE = "a value"  # any kind: number, param, vector, [M, N] tensor, expression
    SCALAR = "a scalar"  # one number for the whole tile (torch takes a Python float)
    TILE = "an [M, N] value"
    BOOL = "a comparison"

    def accepts(self, arg: Instr) -> bool:
        if self is ArgType.BOOL:
            return arg.boolean
        if arg.boolean:
            return False
        if self is ArgType.SCALAR:
            return arg.kind is Kind.SCALAR
        if self is ArgType.TILE:
            return arg.kind is Kind.TILE
        return True


class Group(enum.Enum):
    ARITHMETIC = "arithmetic"
    ACTIVATION = "activation"
    MATH = "math"
    OPERAND = "operand"  # applies a tensor the spec provides (bias, residual)
    SELECT = "select"  # where
    COMPARE = "compare"  # internal: < <= > >=


@dataclass(frozen=True)
class Param:
    name: str
    type: ArgType = ArgType.VALUE
    default: float | None = None


@dataclass(frozen=True)
class OpDef:
    name: str
    params: tuple[Param, ...]
    doc: str
    reference: Callable[..., Any]  # torch: (x, *implicit, *params) -> Tensor
    triton: str  # a Triton expression over {x}, {implicit...}, {params...}
    group: Group
    helpers: tuple[str, ...] = ()
    x_type: ArgType = ArgType.VALUE
    x_name: str = "x"  # the first argument's name when the op is called as a function
    implicit: tuple[str, ...] = ()  # operands the spec supplies, e.g. the linear's bias
    step: bool = True  # usable as an epilogue step (else only in expressions)
    public: bool = True  # the user may name it
    boolean: bool = False  # the result is a comparison
    # The derivative rule (kgen.derive): (d, g, y, *args) -> one contribution per IR
    # argument (x, implicit operands, params; None where it has none), written in
    # registry ops through the builder `d`: g is the gradient reaching the result y.
    # Arguments of type SCALAR take Python floats in torch and get no gradient.
    grad: Callable[..., tuple[Any, ...]] | None = None
    # A cheaper lowering whose error is absolute rather than relative: at most
    # `ulps` (below) fp32 units of max(|result|, 1). Used only where the
    # value feeds nothing but softmaxes (`absolute_forms`), with its own helpers.
    absolute: str | None = None
    absolute_helpers: tuple[str, ...] = ()
    # The op's error bound (LANGUAGE.md, "Accuracy"): its Triton form's result is within
    # `ulps` units of 2^-24 of the exact op applied to its fp32 arguments, relative (of
    # max(|result|, 1) in the absolute form), plus what the op's conditioning makes of
    # its arguments' own rounding. kgen.testing charges each op's value this many units;
    # tests/test_numerics.py holds every op's form to it over the whole fp32 range.
    ulps: float = 8.0

    @property
    def arg_types(self) -> tuple[ArgType, ...]:
        """The type of each IR argument, in order: x, implicit operands, params."""
        return (
            self.x_type,
            *(ArgType.VALUE for _ in self.implicit),
            *(p.type for p in self.params),
        )

    @property
    def arg_names(self) -> tuple[str, ...]:
        return (self.x_name, *self.implicit, *(p.name for p in self.params))

    def result_kind(self, args: Sequence[Instr]) -> Kind:
        kind = Kind.SCALAR
        for a in args:
            kind = kind.join(a.kind)
        return kind

    def check_args(self, args: Sequence[Instr], kind: Kind, boolean: bool) -> bool:
        types = self.arg_types
        return (
            len(args) == len(types)
            and all(t.accepts(a) for t, a in zip(types, args, strict=False))
            and kind is self.result_kind(args)
            and boolean == self.boolean
        )

    def lower(self, names: Sequence[str], absolute: bool = False) -> str:
        """The Triton expression of this op applied to the emitted names of its args
        (in its absolute-error form if asked and it has one)."""
        template = self.absolute if absolute and self.absolute else self.triton
        return template.format(**dict(zip(self.arg_names, names, strict=False)))

    def helpers_for(self, absolute: bool = False) -> tuple[str, ...]:
        return self.absolute_helpers if absolute and self.absolute else self.helpers


def _op(
    name: str,
    doc: str,
    reference: Callable[..., Any],
    triton: str,
    group: Group,
    *params: Param,
    **extra: Any,
) -> OpDef:
    return OpDef(name, tuple(params), doc, reference, triton, group, **extra)


FP32_MAX = torch.finfo(torch.float32).max


def _hardtanh(x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    """clamp's values with F.hardtanh's gradient: 1 strictly inside (lo, hi), 0 at and
    beyond the bounds (clamp's passes at them); F.hardtanh itself refuses lo > hi."""
    clamped = torch.clamp(x, lo, hi)
    return torch.where((x > lo) & (x < hi), x, clamped.detach())


def fp32_overflow(value: torch.Tensor) -> torch.Tensor:
    """`value` (float64, say) with fp32's overflow: past FLT_MAX it is +-Inf. The Inf
    branch is detached: a gradient through `value * inf` would be 0 * inf = NaN even
    where that branch is not taken, and kgen.testing's error bound differentiates the
    reference."""
    return torch.where(value.abs() > FP32_MAX, value.detach() * math.inf, value)


FP32_UNDER = 2.0**-150  # half fp32's smallest subnormal: a result this small rounds to 0


def fp32_range(value: torch.Tensor) -> torch.Tensor:
    """`value` (float64, say) with fp32's range: past FLT_MAX it is +-Inf, and at most
    half the smallest subnormal (2^-150) rounds to a signed zero, as it does in any
    fp32 arithmetic."""
    value = fp32_overflow(value)
    return torch.where(value.abs() <= FP32_UNDER, value * 0.0, value)


V = ArgType.VALUE
S = ArgType.SCALAR


def _softplus_reference(x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    # z = beta x is an fp32 product in the kernel and in PyTorch's fp32 softplus, with
    # fp32's range: past FLT_MAX it is Inf (x = 20, beta = -FLT_MAX, threshold = -Inf:
    # both give -0.0, where float64's finite z would pick x), and a product below
    # 2^-150 is 0 (x = beta = 1.6e-34, threshold = 0: both take log1p(exp(0)) / beta,
    # where float64's z = 2.7e-68 > 0 would pick x)
    z = fp32_range(x * beta)
    log1p_exp = torch.clamp(z, min=0.0) + torch.log1p(torch.exp(-z.abs()))
    return torch.where(z > threshold, x, log1p_exp / beta)


# -- derivative rules (OpDef.grad), in registry ops: d is kgen.derive's builder, g the
# gradient reaching the op's result y. Each follows torch's own backward formula
# (derivatives.yaml), ties and kinks included, so gradients match torch.autograd.


def _d_minimum(d: Any, g: Any, y: Any, x: Any, v: Any) -> tuple[Any, ...]:
    # torch.minimum: the smaller operand takes g, a tie gives each half
    share = d.where(x < v, 1.0, d.where(x > v, 0.0, 0.5))
    return g * share, g * (1.0 - share)


def _d_maximum(d: Any, g: Any, y: Any, x: Any, v: Any) -> tuple[Any, ...]:
    share = d.where(x > v, 1.0, d.where(x < v, 0.0, 0.5))
    return g * share, g * (1.0 - share)


def _d_clamp(d: Any, g: Any, y: Any, x: Any, lo: Any, hi: Any) -> tuple[Any, ...]:
    # torch.clamp with tensor bounds (clamp_backward, clamp_backward_min_max): x takes g
    # inside [lo, hi], lo where x < lo < hi, hi where x > hi or hi < lo (so where
    # lo == hi and x is outside, torch gives no one g, and neither does this)
    inside = d.where(x < lo, 0.0, d.where(x > hi, 0.0, 1.0))
    below = d.where(x < lo, d.where(lo < hi, 1.0, 0.0), 0.0)
    above = d.where(x > hi, 1.0, d.where(hi < lo, 1.0, 0.0))
    return g * inside, g * below, g * above


def _d_gelu(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    # Phi(x) + x phi(x), as torch's gelu_backward
    cdf = 0.5 + 0.5 * d.erf(x * 0.7071067811865476)
    pdf = d.exp(x * x * -0.5) * 0.3989422804014327
    return (g * (cdf + x * pdf),)


def _d_gelu_tanh(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    # y = x s, s = sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3)
    s = d.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    du = 1.5957691216057308 * (1.0 + 0.134145 * x * x)
    return (g * (s + x * s * (1.0 - s) * du),)


def _d_mish(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    t = d.tanh(d.softplus(x, 1.0, 20.0))
    return (g * (t + x * (1.0 - t * t) * d.sigmoid(x)),)


def _d_hardswish(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    # torch: 0 below -3, x / 3 + 1/2 up to 3 (inclusive), 1 above
    return (d.where(x < -3.0, 0.0, d.where(x > 3.0, g, g * (x * (1.0 / 3.0) + 0.5))),)


_OPS: list[OpDef] = [
    # -- applying the spec's own tensors
    _op(
        "bias",
        "x + bias[n], the linear's bias",
        lambda x, b: x + b,
        "{x} + {bias}",
        Group.OPERAND,
        implicit=("bias",),
        grad=lambda d, g, y, x, b: (g, g),
    ),
    _op(
        "residual",
        "x + r, r an [M, N] value (an input, or a bound name)",
        lambda x, r: x + r,
        "{x} + {r}",
        Group.OPERAND,
        Param("r", ArgType.TILE),
        grad=lambda d, g, y, x, r: (g, g),
    ),
    # -- arithmetic
    _op(
        "add",
        "x + v",
        lambda x, v: x + v,
        "{x} + {v}",
        Group.ARITHMETIC,
        Param("v"),
        grad=lambda d, g, y, x, v: (g, g),
    ),
    _op(
        "sub",
        "x - v",
        lambda x, v: x - v,
        "{x} - {v}",
        Group.ARITHMETIC,
        Param("v"),
        grad=lambda d, g, y, x, v: (g, -g),
    ),
    _op(
        "mul",
        "x * v",
        lambda x, v: x * v,
        "{x} * {v}",
        Group.ARITHMETIC,
        Param("v"),
        grad=lambda d, g, y, x, v: (g * v, g * x),
    ),
    _op(
        "div",
        "x / v",
        lambda x, v: x / v,
        "{x} / {v}",
        Group.ARITHMETIC,
        Param("v"),
        grad=lambda d, g, y, x, v: (g / v, -g * x / (v * v)),
    ),
    # not `-x`: Triton lowers that as 0 - x, which turns +0 into +0 rather than -0
    _op("neg", "-x", torch.neg, "{x} * -1.0", Group.ARITHMETIC, grad=lambda d, g, y, x: (-g,)),
    _op(
        "min",
        "torch.minimum(x, v); NaN in either gives NaN",
        torch.minimum,
        "_minimum({x}, {v})",
        Group.ARITHMETIC,
        Param("v"),
        helpers=("_minimum",),
        grad=_d_minimum,
    ),
    _op(
        "max",
        "torch.maximum(x, v); NaN in either gives NaN",
        torch.maximum,
        "_maximum({x}, {v})",
        Group.ARITHMETIC,
        Param("v"),
        helpers=("_maximum",),
        grad=_d_maximum,
    ),
    _op(
        "clamp",
        "torch.clamp(x, lo, hi): min(max(x, lo), hi)",
        torch.clamp,
        "_clamp({x}, {lo}, {hi})",
        Group.ARITHMETIC,
        Param("lo"),
        Param("hi"),
        helpers=("_clamp",),
        grad=_d_clamp,
    ),
    _op(
        "sigmoid_residual",
        "x + s * sigmoid(x)",
        lambda x, s: x + s * torch.sigmoid(x),
        "{x} + {s} * _sigmoid({x})",
        Group.ARITHMETIC,
        Param("s"),
        helpers=("_sigmoid",),
        grad=lambda d, g, y, x, s: (
            g * (1.0 + s * d.sigmoid(x) * (1.0 - d.sigmoid(x))),
            g * d.sigmoid(x),
        ),
    ),
    # -- math
    _op("exp", "e^x", torch.exp, "tl.exp({x})", Group.MATH, grad=lambda d, g, y, x: (g * y,)),
    _op(
        "log",
        "natural logarithm (NaN below 0, -inf at 0)",
        torch.log,
        "tl.log({x})",
        Group.MATH,
        grad=lambda d, g, y, x: (g / x,),
    ),
    _op(
        "abs",
        "|x|",
        torch.abs,
        "tl.abs({x})",
        Group.MATH,
        grad=lambda d, g, y, x: (d.where(x > 0.0, g, d.where(x < 0.0, -g, 0.0)),),
    ),
    _op(
        "square",
        "x * x",
        torch.square,
        "{x} * {x}",
        Group.MATH,
        grad=lambda d, g, y, x: (2.0 * g * x,),
    ),
    # IEEE square root: the GPU's fast tl.sqrt / tl.rsqrt flush subnormal inputs to zero
    # (sqrt(-1e-38) would be -0, not torch's NaN)
    _op(
        "sqrt",
        "square root (NaN below 0)",
        torch.sqrt,
        # the hardware's approximate root flushes a subnormal input to 0: below fp32's
        # normal range the input is scaled by 2^64 first and the root by 2^-32 after
        "tl.where({x} < 1.1754943508222875e-38, tl.sqrt({x} * 18446744073709551616.0) * 2.3283064365386963e-10,"
        " tl.sqrt({x}))",
        Group.MATH,
        grad=lambda d, g, y, x: (g / (2.0 * y),),
    ),
    _op(
        "rsqrt",
        "1 / sqrt(x)",
        torch.rsqrt,
        # as sqrt's: subnormal inputs scaled by 2^64, the result by 2^32
        "tl.where({x} < 1.1754943508222875e-38, tl.rsqrt({x} * 18446744073709551616.0) * 4294967296.0,"
        " tl.rsqrt({x}))",
        Group.MATH,
        grad=lambda d, g, y, x: (-0.5 * g * y * y * y,),
    ),
    _op(
        "erf",
        "the error function",
        torch.erf,
        "tl.erf({x})",
        Group.MATH,
        grad=lambda d, g, y, x: (g * 1.1283791670955126 * d.exp(-(x * x)),),
    ),
    # -- activations
    _op(
        "relu",
        "max(x, 0); NaN stays NaN",
        torch.relu,
        "tl.where({x} < 0.0, 0.0, {x})",
        Group.ACTIVATION,
        grad=lambda d, g, y, x: (d.where(x > 0.0, g, 0.0),),
    ),
    _op(
        "leaky_relu",
        "x if x > 0 else slope * x",
        lambda x, s: F.leaky_relu(x, s),
        "tl.where({x} > 0.0, {x}, {x} * {slope})",
        Group.ACTIVATION,
        Param("slope", S, 0.01),
        grad=lambda d, g, y, x, slope: (d.where(x > 0.0, g, g * slope), None),
    ),
    _op(
        "hardtanh",
        "clamp(x, min, max), as F.hardtanh (max wins if min > max)",
        _hardtanh,
        "_clamp({x}, {min}, {max})",
        Group.ACTIVATION,
        Param("min", S, -1.0),
        Param("max", S, 1.0),
        helpers=("_clamp",),
        grad=lambda d, g, y, x, lo, hi: (d.where(x > lo, d.where(x < hi, g, 0.0), 0.0), None, None),
    ),
    _op(
        "sigmoid",
        "1 / (1 + e^-x)",
        torch.sigmoid,
        "_sigmoid({x})",
        Group.ACTIVATION,
        helpers=("_sigmoid",),
        grad=lambda d, g, y, x: (g * y * (1.0 - y),),
    ),
    _op(
        "tanh",
        "hyperbolic tangent",
        torch.tanh,
        "_tanh({x})",
        Group.ACTIVATION,
        helpers=("_tanh",),
        grad=lambda d, g, y, x: (g * (1.0 - y * y),),
    ),
    _op(
        "gelu",
        "exact GELU, 0.5 x (1 + erf(x / sqrt(2))): F.gelu's default",
        # F.gelu's definition in a form that keeps its digits where F.gelu's own
        # `1 + erf(...)` cancels (x below about -5, even in float64)
        lambda x: 0.5 * x * torch.special.erfc(x * -0.7071067811865476),
        "_gelu({x})",
        Group.ACTIVATION,
        helpers=("_gelu",),
        absolute="_gelu_erf({x})",
        absolute_helpers=("_gelu_erf",),
        grad=_d_gelu,
    ),
    _op(
        "gelu_tanh",
        'tanh-approximated GELU, F.gelu(x, approximate="tanh")',
        # the same, with 0.5 (1 + tanh(u)) = sigmoid(2 u): no cancellation for x < 0
        lambda x: x * torch.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x)),
        "_gelu_tanh({x})",
        Group.ACTIVATION,
        helpers=("_gelu_tanh",),
        grad=_d_gelu_tanh,
    ),
    _op(
        "silu",
        "x * sigmoid(x) (alias: swish)",
        F.silu,
        "_silu({x})",
        Group.ACTIVATION,
        helpers=("_silu",),
        grad=lambda d, g, y, x: (g * d.sigmoid(x) * (1.0 + x * (1.0 - d.sigmoid(x))),),
    ),
    _op(
        "mish",
        "x * tanh(softplus(x))",
        F.mish,
        "_mish({x})",
        Group.ACTIVATION,
        helpers=("_mish",),
        grad=_d_mish,
    ),
    _op(
        "softplus",
        "log(1 + e^(beta x)) / beta, x where beta x > threshold",
        # F.softplus's definition, with log(1 + e^z) as max(z, 0) + log1p(e^-|z|): F.softplus
        # itself overflows to Inf (even in float64) when a threshold above ~88 / beta lets a
        # large beta x reach its e^z, where the true value, x, is finite (kgen gives x)
        _softplus_reference,
        "_softplus({x}, {beta}, {threshold})",
        Group.ACTIVATION,
        Param("beta", S, 1.0),
        Param("threshold", S, 20.0),
        helpers=("_softplus",),
        grad=lambda d, g, y, x, beta, t: (
            d.where(x * beta > t, g, g * d.sigmoid(x * beta)),
            None,
            None,
        ),
    ),
    _op(
        "elu",
        "x if x >= 0 else alpha (e^x - 1)",
        lambda x, a: F.elu(x, a),
        "_elu({x}, {alpha})",
        Group.ACTIVATION,
        Param("alpha", S, 1.0),
        helpers=("_elu",),
        grad=lambda d, g, y, x, a: (d.where(x > 0.0, g, g * (y + a)), None),
    ),
    _op(
        "selu",
        "1.0507... * elu(x, 1.6732...)",
        F.selu,
        "1.0507009873554805 * _elu({x}, 1.6732632423543772)",
        Group.ACTIVATION,
        helpers=("_elu",),
        grad=lambda d, g, y, x: (
            d.where(x > 0.0, 1.0507009873554805 * g, g * (y + 1.7580993408473766)),
        ),
    ),
    _op(
        "celu",
        "x if x >= 0 else alpha (e^(x / alpha) - 1)",
        lambda x, a: F.celu(x, a),
        "_celu({x}, {alpha})",
        Group.ACTIVATION,
        Param("alpha", S, 1.0),
        helpers=("_celu",),
        grad=lambda d, g, y, x, a: (d.where(x > 0.0, g, g * d.exp(x / a)), None),
    ),
    _op(
        "hardsigmoid",
        "relu6(x + 3) / 6",
        F.hardsigmoid,
        "_hardsigmoid({x})",
        Group.ACTIVATION,
        helpers=("_hardsigmoid",),
        grad=lambda d, g, y, x: (d.where(x > -3.0, d.where(x < 3.0, g * (1.0 / 6.0), 0.0), 0.0),),
    ),
    _op(
        "hardswish",
        "x * relu6(x + 3) / 6",
        F.hardswish,
        "{x} * _hardsigmoid({x})",
        Group.ACTIVATION,
        helpers=("_hardsigmoid",),
        grad=_d_hardswish,
    ),
    _op(
        "logsigmoid",
        "log(sigmoid(x)), without overflow",
        F.logsigmoid,
        "_logsigmoid({x})",
        Group.ACTIVATION,
        helpers=("_logsigmoid",),
        grad=lambda d, g, y, x: (g * d.sigmoid(-x),),
    ),
    # -- selection (expressions only)
    _op(
        "where",
        "a where the comparison c holds, else b",
        torch.where,
        "tl.where({c}, {a}, {b})",
        Group.SELECT,
        Param("a"),
        Param("b"),
        x_type=ArgType.BOOL,
        x_name="c",
        step=False,
        grad=lambda d, g, y, c, a, b: (None, d.where(c, g, 0.0), d.where(c, 0.0, g)),
    ),
    # -- comparisons (internal: written as operators, only inside where)
    *(
        _op(
            name,
            f"x {sym} v",
            ref,
            f"{{x}} {sym} {{v}}",
            Group.COMPARE,
            Param("v"),
            step=False,
            public=False,
            boolean=True,
        )
        for name, sym, ref in (
            ("lt", "<", torch.lt),
            ("le", "<=", torch.le),
            ("gt", ">", torch.gt),
            ("ge", ">=", torch.ge),
        )
    ),
]

OPS: dict[str, OpDef] = {op.name: op for op in _OPS}


def absolute_forms(kernel: Kernel) -> frozenset[int]:
    """The values lowered in their op's `absolute` form: those whose every use is as a
    softmax's input. softmax(x)_j = exp(x_j - m) / sum_i exp(x_i - m), so an absolute
    error e in each x_i moves every output by a relative 2e at most: there, a form
    accurate to a few ulps of max(|x|, 1) costs no more accuracy than the softmax's
    own rounding (kgen.testing bounds it as such). Exact GELU before a softmax on the
    H100 (1024x8192x8192 fp16, bias; gelu; softmax): 235 -> 221 us."""
    uses: dict[int, list[Instr]] = {}
    for instr in kernel.body:
        for a in set(instr.args):
            uses.setdefault(a, []).append(instr)
    return frozenset(
        instr.id
        for instr in kernel.body
        if instr.op in OPS
        and OPS[instr.op].absolute
        and instr.id in uses  # (so not the stored result)
        and all(u.op == "softmax" and list(u.args) == [instr.id] for u in uses[instr.id])
    )


# Other names for the same op: the IR always uses the target.
ALIASES: dict[str, str] = {"swish": "silu", "scale": "mul"}

# Operators of expressions, as ops.
BINARY_OPERATORS: dict[str, str] = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
COMPARISONS: dict[str, str] = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge"}

# ---------------------------------------------------------------------------
# Row operations (LANGUAGE.md, "Row operations"): steps that need a whole row, or a
# group of columns, of the running value. Each reduces a *segment* of columns -- the
# whole row, a group (groupnorm) or a window (pools) -- to statistics of one family,
# then either normalises every column with them or leaves one value per segment.
#
#   family "exp":     m (the shift, a maximum), s = sum(exp(x - m))
#   family "moments": mean, var (biased), over `count` columns
#   family "sum" / "max" / "min": one value (max and min propagate NaN)
#   family "unpool" / "position" (internal, for pools' derivatives): no statistics; a
#     pooled value back in its window's columns, a column's place in its window
#
# `apply` is the Triton expression of the result from {x} (normalisers only) and the
# statistics; `shift` says how the exp family picks m from the maximum {max} (it
# decides what infinities give, as in torch). Two-pass lowering (kgen/lower/rows.py) stores,
# for a normaliser, `partial` -- the value relative to its tile's statistics {m_t},
# {mean_t}, which keeps it well conditioned in the output dtype; the moments family also
# divides it by the tile's spread {spread_t} = 1 / {scale_t} (its standard deviation, or
# 1), so that it fits a 16-bit dtype (a deviation of 1e5 is finite after a layernorm,
# not in fp16) -- and finishes with `finish` from that stored {u}, the tile's statistics
# and the row's.


class RowKind(enum.Enum):
    NORMALIZE = "normalize"  # [.., W] -> [.., W]
    REDUCE = "reduce"  # [.., W] -> one value per row
    POOL = "pool"  # [.., W] -> [.., W // k]
    UNPOOL = "unpool"  # [.., W // k] -> [.., W]: each window's value in its k columns


@dataclass(frozen=True)
class RowOpDef:
    name: str
    kind: RowKind
    doc: str
    reference: Callable[..., torch.Tensor]  # torch: (x [M, W], size, eps, weight, bias)
    family: str
    apply: str
    shift: str = ""
    partial: str = ""
    finish: str = ""
    eps: bool = False  # takes eps=1e-5 (a scalar expression)
    keepdim: bool = False  # takes keepdim=true|false
    size: str = ""  # takes a positive integer literal: "groups" or "k"
    affine: bool = False  # owns a weight and bias per column (groupnorm)
    helpers: tuple[str, ...] = ()
    # The derivative rule, as OpDef.grad: (d, g, y, x, *rest) -> contributions for
    # (x, *rest), rest being eps (a scalar: no gradient) or groupnorm's eps, weight and
    # bias. Written for x a row of columns ([M, N]); kgen.derive itself handles a row
    # op on one value per row (elementwise there). None: not differentiable yet.
    grad: Callable[..., tuple[Any, ...]] | None = None

    @property
    def reduces(self) -> bool:
        return self.kind is RowKind.REDUCE

    @property
    def params(self) -> tuple[tuple[str, float | None], ...]:
        """(name, default) of the arguments a spec may write, in order."""
        params: list[tuple[str, float | None]] = []
        if self.size:
            params.append((self.size, None))
        if self.eps:
            params.append(("eps", 1e-5))
        if self.keepdim:
            params.append(("keepdim", 1.0))
        return tuple(params)

    def result(self, x: Instr, size: int) -> tuple[Kind, int]:
        """(kind, pool) of the result on `x` (kind [M, N] or [M])."""
        if self.kind is RowKind.REDUCE:
            return Kind.ROW, 1
        if self.kind is RowKind.POOL and x.kind is Kind.TILE:
            return Kind.TILE, x.pool * size
        if self.kind is RowKind.UNPOOL and x.kind is Kind.TILE:
            return Kind.TILE, x.pool // size
        return x.kind, x.pool

    def check_args(self, args: Sequence[Instr], instr: Instr) -> bool:
        x, rest = args[0], list(args[1:])
        ok = not x.boolean and x.kind in (Kind.TILE, Kind.ROW)
        if self.eps:
            ok = ok and bool(rest) and rest.pop(0).kind is Kind.SCALAR
        if self.affine:
            ok = ok and len(rest) == 2 and all(a.op == "load" and a.pool == x.pool for a in rest)
            rest = []
        ok = ok and not rest and (instr.size > 0) == bool(self.size)
        ok = ok and (self.size != "k" or x.kind is Kind.TILE or instr.size == 1)
        return ok and (instr.kind, instr.pool) == self.result(x, instr.size) and not instr.boolean


def _group_norm(
    x: torch.Tensor, groups: int, eps: float, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """F.group_norm of [M, C] (biased variance); written out where torch refuses: one
    value per group with M = 1, which is well defined (the result is the bias). A
    weight and bias of [M, C] (one per element) apply elementwise."""
    M, C = x.shape
    if weight.dim() == 2:  # per element ([M, C]: the gradient oracle's copies)
        return (
            _group_norm(x, groups, eps, torch.ones_like(x[0]), torch.zeros_like(x[0])) * weight
            + bias
        )
    if M * (C // groups) > 1:  # what a PyTorch user runs (and kgen bench times as eager)
        return F.group_norm(x, groups, weight, bias, eps)
    g = x.reshape(M, groups, C // groups)
    mean = g.mean(dim=2, keepdim=True)
    var = ((g - mean) ** 2).mean(dim=2, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(M, C)
    return y * weight + bias


def _pool(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def pool(x: torch.Tensor, k: int, *_: Any) -> torch.Tensor:
        if x.shape[1] < k:
            return x[:, :0]  # no whole window (torch raises; the remainder is dropped)
        return function(x[:, None, :], k).squeeze(1)

    return pool


def _d_row_extreme(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    # torch's amax / amin: g shared evenly among the row's values equal to the extreme
    hit = d.where(x < y, 0.0, d.where(x > y, 0.0, 1.0))
    return (g * hit / d.row_sum(hit),)


def _d_avgpool(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    # each column of a window gets 1/k of its gradient; the remainder none
    return (d.unpool(d.spread(g, y)) * (1.0 / d.size),)


def _d_maxpool(d: Any, g: Any, y: Any, x: Any) -> tuple[Any, ...]:
    # as torch's max_pool1d: the window's gradient goes to one column, the first equal
    # to the maximum, or the last NaN of a window that has one
    k = float(d.size)
    peak = d.unpool(y)
    q = d.window_position(x)  # 0 .. k-1 within the window
    equal = d.where(x < peak, k, d.where(x > peak, k, q))
    first = -d.maxpool(-equal)
    last_nan = d.maxpool(d.where(x >= x, -1.0, q))
    pick = d.unpool(d.where(last_nan >= 0.0, last_nan, first))
    # the gradient selected, not multiplied by a 0/1 mask: an inf or NaN gradient
    # reaches the picked column only, as torch scatters it
    spread = d.unpool(d.spread(g, y))
    return (d.where(q < pick, 0.0, d.where(q > pick, 0.0, spread)),)


def _unpool(x: torch.Tensor, k: int, *_: Any) -> torch.Tensor:
    """Each column's value in k columns ([M, W] -> [M, W k]; the pooled value's
    remainder columns are the caller's: kgen.reference pads them with zeros)."""
    return x.repeat_interleave(k, dim=1)


def _window_position(x: torch.Tensor, k: int, *_: Any) -> torch.Tensor:
    position = torch.arange(x.shape[1], device=x.device) % k
    return position.to(x.dtype).expand(x.shape)


def _d_layernorm(d: Any, g: Any, y: Any, x: Any, eps: Any) -> tuple[Any, ...]:
    # y = (x - mean) rstd: dx = rstd (g - mean(g) - y mean(g y)), rstd recomputed
    centred = x - d.row_mean(x)
    rstd = d.rsqrt(d.row_mean(centred * centred) + eps)
    return rstd * (g - d.row_mean(g) - y * d.row_mean(g * y)), None


def _d_groupnorm(
    d: Any, g: Any, y: Any, x: Any, eps: Any, weight: Any, bias: Any
) -> tuple[Any, ...]:
    # y = xhat w + b, xhat = (x - mean_G) rstd_G over each group G of columns:
    # dx = rstd (gw - mean_G(gw) - xhat mean_G(gw xhat)) with gw = g w; dw = g xhat and
    # db = g (summed over the rows by the operands' reduction); rstd recomputed
    centred = x - d.group_mean(x)
    rstd = d.rsqrt(d.group_mean(centred * centred) + eps)
    xhat = centred * rstd
    gw = g * weight
    dx = rstd * (gw - d.group_mean(gw) - xhat * d.group_mean(gw * xhat))
    return dx, None, g * xhat, g


def _group_mean(x: torch.Tensor, groups: int, *_: Any) -> torch.Tensor:
    M, C = x.shape
    g = x.reshape(M, groups, C // groups)
    return g.mean(dim=2, keepdim=True).expand(g.shape).reshape(M, C)


_ROW_OPS = [
    RowOpDef(
        "softmax",
        RowKind.NORMALIZE,
        "exp(x) / sum(exp(x)) over the row",
        lambda x, *_: torch.softmax(x, dim=1),
        "exp",
        "tl.exp({x} - {m}) / {s}",
        shift="tl.where({max} == float('-inf'), 0.0, {max})",
        partial="tl.exp({x} - {m_t})",
        finish="{u} * (tl.exp({m_t} - {m}) / {s})",
        grad=lambda d, g, y, x: (y * (g - d.row_sum(g * y)),),
    ),
    RowOpDef(
        "log_softmax",
        RowKind.NORMALIZE,
        "x - logsumexp(x) over the row",
        lambda x, *_: torch.log_softmax(x, dim=1),
        "exp",
        "({x} - {m}) - tl.log({s})",
        shift="tl.where({max} == float('-inf'), 0.0, {max})",
        partial="{x} - {m_t}",
        finish="{u} + (({m_t} - {m}) - tl.log({s}))",
        grad=lambda d, g, y, x: (g - d.exp(y) * d.row_sum(g),),
    ),
    RowOpDef(
        "logsumexp",
        RowKind.REDUCE,
        "log(sum(exp(x))) over the row, without overflow",
        lambda x, *_: torch.logsumexp(x, dim=1, keepdim=True),
        "exp",
        "{m} + tl.log({s})",
        shift="tl.where(tl.abs({max}) == float('inf'), 0.0, {max})",
        keepdim=True,
        grad=lambda d, g, y, x: (g * d.exp(x - y),),
    ),
    RowOpDef(
        "row_sum",
        RowKind.REDUCE,
        "the sum of the row",
        lambda x, *_: x.sum(dim=1, keepdim=True),
        "sum",
        "{sum}",
        keepdim=True,
        grad=lambda d, g, y, x: (g,),
    ),
    RowOpDef(
        "row_mean",
        RowKind.REDUCE,
        "the mean of the row",
        lambda x, *_: x.mean(dim=1, keepdim=True),
        "sum",
        "{sum} / {count}",
        keepdim=True,
        grad=lambda d, g, y, x: (g / d.count(),),
    ),
    RowOpDef(
        "row_max",
        RowKind.REDUCE,
        "the largest value of the row (NaN if any is NaN)",
        lambda x, *_: x.amax(dim=1, keepdim=True),
        "max",
        "{max}",
        keepdim=True,
        grad=_d_row_extreme,
    ),
    RowOpDef(
        "row_min",
        RowKind.REDUCE,
        "the smallest value of the row (NaN if any is NaN)",
        lambda x, *_: x.amin(dim=1, keepdim=True),
        "min",
        "{min}",
        keepdim=True,
        grad=_d_row_extreme,
    ),
    RowOpDef(
        "layernorm",
        RowKind.NORMALIZE,
        "(x - mean) / sqrt(var + eps) over the row, biased variance, no affine",
        lambda x, _size, eps, *__: F.layer_norm(x, (x.shape[1],), eps=eps),
        "moments",
        "({x} - {mean}) * {rstd}",
        partial="({x} - {mean_t}) * {scale_t}",
        finish="({u} * {spread_t} + ({mean_t} - {mean})) * {rstd}",
        eps=True,
        grad=_d_layernorm,
    ),
    RowOpDef(
        "groupnorm",
        RowKind.NORMALIZE,
        "layernorm over each of `groups` groups of columns, then * weight + bias per column",
        lambda x, groups, eps, weight, bias: _group_norm(x, groups, eps, weight, bias),
        "moments",
        "({x} - {mean}) * {rstd} * {weight} + {bias}",
        partial="({x} - {mean_t}) * {scale_t}",
        finish="({u} * {spread_t} + ({mean_t} - {mean})) * {rstd} * {weight} + {bias}",
        eps=True,
        size="groups",
        affine=True,
        grad=_d_groupnorm,
    ),
    RowOpDef(
        "avgpool",
        RowKind.POOL,
        "the mean of each window of k columns (stride k; a remainder is dropped)",
        _pool(F.avg_pool1d),
        "sum",
        "{sum} / {count}",
        size="k",
        grad=_d_avgpool,
    ),
    RowOpDef(
        "maxpool",
        RowKind.POOL,
        "the largest value of each window of k columns (stride k; NaN if any is NaN)",
        _pool(F.max_pool1d),
        "max",
        "{max}",
        size="k",
        grad=_d_maxpool,
    ),
]

ROW_OPS: dict[str, RowOpDef] = {op.name: op for op in _ROW_OPS}

# Row operations that only derivative rules write (kgen.derive), never a spec: not in
# the language, so not in ROW_OPS; the lowering finds them in ALL_ROW_OPS.
_INTERNAL_ROW_OPS = [
    RowOpDef(
        "group_mean",
        RowKind.NORMALIZE,
        "the mean of each of `groups` groups of columns, in each column of the group",
        _group_mean,
        "sum",
        "{sum} / {count}",
        size="groups",
        grad=lambda d, g, y, x: (d.group_mean(g),),
    ),
    RowOpDef(
        "unpool",
        RowKind.UNPOOL,
        "each value of a pooled row in the k columns of its window (0 in the remainder)",
        _unpool,
        "unpool",
        "",
        size="k",
    ),
    RowOpDef(
        "window_position",
        RowKind.NORMALIZE,
        "each column's position in its window of k columns, 0 .. k-1",
        _window_position,
        "position",
        "",
        size="k",
    ),
]
ALL_ROW_OPS: dict[str, RowOpDef] = {**ROW_OPS, **{op.name: op for op in _INTERNAL_ROW_OPS}}


def lookup(name: str) -> OpDef | None:
    """The public op a user's name refers to (aliases resolved), or None."""
    op = OPS.get(ALIASES.get(name, name))
    return op if op is not None and op.public else None


def public_names() -> list[str]:
    """Every name a user may write for a built-in op, aliases included."""
    return sorted([n for n, op in OPS.items() if op.public] + list(ALIASES))
