"""Extreme values through every op and every spec (issue "Nothing breaks kgen", item 5).

Per op: a one-step spec for every op of the registry, its arguments of every kind the
op accepts (a constant, a float param, a scalar param, a [N] vector, an [M] input, an
[M, N] input), fed values drawn from `strategies.extreme_floats`: 0 and -0.0,
subnormals, magnitudes up to fp32's largest, +-Inf, NaN and the op's switch points
+- a few ulps. The op's first argument comes either from the accumulator of an exact
GEMM (K = 1, weight = 1: acc = x exactly, Inf and NaN included) or, for the rows
where `sel` is negative, from an [M, N] input (the accumulator starts at +0, so only
an input can carry -0.0 into the op):

    epilogue: acc = where(sel > 0, acc, xin); OP(ARGS)

Per spec: each spec of specs/ through its committed module, in each dtype, with x,
weight and the other tensors scaled up to 1e4 (and 1e17 * 1e17 in fp32, still a finite
GEMM), and Inf, NaN, +-0 and subnormal entries placed in x, the weight and the other
tensors (fp32's largest too, in all but x and the weight). Known GEMM failures
(KNOWN_GEMM_FAILURES) and the interpreter's bf16 conversion (it truncates, and gets
subnormals wrong) are left out where they would fire, each with its reason.

Empty problems: M = 0 or N = 0 gives an empty result, K = 0 the epilogue of a zero GEMM.

The property, element by element, with `torch32` the reference (kgen.reference, the
registry's torch ops) evaluated in fp32 and `exact` the same in float64 with fp32's
range (what overflows in fp32 overflows there too; kgen.testing's oracle):

- kgen's result is NaN, +Inf, -Inf or finite as torch32's is, or as exact's is. The
  two differ only where torch32 over- or underflows in an intermediate: hardswish(x)
  of |x| > FP32_MAX / 6 is Inf in torch32 (x * 6 overflows) and x in kgen;
  sigmoid_residual(-89, Inf) is NaN in torch32 (sigmoid underflows to 0) and -Inf
  (exact) in kgen. Either is accepted: following PyTorch's fp32 behaviour or the
  exact answer.
- kgen.testing.check passes: finite results within the oracle's bound, NaN and Inf
  only where the oracle gives them (elements that follow torch32 against exact are
  judged by the first rule alone).

Where torch is not the right answer at all (both torch32 and exact are wrong), the
registry's reference is the right one: softplus with a threshold above ~88 / beta
(torch overflows e^(beta x) to Inf, even in float64, where the answer is x) has a
stable reference in kgen/ops.py.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import DEVICES, SPECS, build_and_import, committed, import_file
from hypothesis import given, note, reject
from hypothesis import strategies as st
from strategies import DTYPES, FP32_MAX, FP32_TINY, NON_FINITE, extreme_floats

from kgen import ops, reference, testing
from kgen.analyze import analyze
from kgen.ir import Gemm, Kernel, Kind
from kgen.lower.module import emit_module
from kgen.syntax import parse

# ---------------------------------------------------------------------------
# Per op

LN10 = math.log(10.0)  # _log1p's series/log switch, reached as exp(-|z|) = 0.1
EXP_MAX = 88.72283935546875  # largest x with fp32 exp(x) finite
EXP_SUBNORMAL = 87.33654022216797  # exp(-x) below fp32's smallest normal
EXP_ZERO = 103.97207641601562  # exp(-x) rounds to 0

# Each op's switch points (both signs are drawn): its helper's branch points in
# kgen/tlib.py and where its fp32 intermediates over- or underflow.
_SIGMOID = (0.0, EXP_SUBNORMAL, EXP_MAX, EXP_ZERO)
_EXPM1 = (0.0, 0.5, 17.3, EXP_MAX, EXP_ZERO)  # expm1 saturates at -1 from x ~ -17.3
SWITCH_POINTS: dict[str, tuple[float, ...]] = {
    "bias": (0.0,),
    "residual": (0.0,),
    "add": (0.0,),
    "sub": (0.0,),
    "mul": (0.0, 1.8446743e19),
    "div": (0.0, 1.8446743e19),
    "neg": (0.0,),
    "min": (0.0,),
    "max": (0.0,),
    "clamp": (0.0, 1.0),
    "sigmoid_residual": _SIGMOID,
    "exp": (0.0, EXP_MAX, EXP_SUBNORMAL, EXP_ZERO),
    "log": (0.0, 1.0, FP32_TINY, 1e-45),
    "abs": (0.0,),
    "square": (0.0, 1.8446743e19, 1.0842022e-19),  # x * x overflows; is subnormal
    "sqrt": (0.0, 1.0, FP32_TINY, 1e-45),
    "rsqrt": (0.0, 1.0, FP32_TINY, 1e-45, 1.8446743e19),
    "erf": (0.0, 0.5, 3.9192059),  # erf rounds to 1 from 3.92
    "relu": (0.0,),
    "leaky_relu": (0.0,),
    "hardtanh": (0.0, 1.0, 2.0),
    "sigmoid": _SIGMOID,
    "tanh": (0.0, 0.125, 9.010913, 44.36142, 51.98627),  # Taylor switch; exp(-2|x|) tiny
    "gelu": (0.0, 5.0, 13.2, 14.5, 2.6087e19),  # 1 - Phi cancels; exp(-z^2) underflows
    "gelu_tanh": (0.0, 5.0, 11.2, 6.98e12),  # sigmoid's argument overflows; x^3 does
    "silu": _SIGMOID,
    "mish": (0.0, 20.0, LN10, 2.0166, EXP_MAX, EXP_ZERO),  # softplus(-2.0166) = 0.125
    "softplus": (0.0, 20.0, 2.5, 10.0, LN10, EXP_MAX, EXP_ZERO),  # threshold / beta
    "elu": _EXPM1,
    "selu": _EXPM1,
    "celu": (*_EXPM1, 1.5),  # x / alpha = -0.5 for alpha = 3
    "hardsigmoid": (0.0, 3.0),
    "hardswish": (0.0, 3.0, FP32_MAX / 6),
    "logsigmoid": (0.0, LN10, EXP_MAX, EXP_ZERO),
    "where": (0.0,),
}
# Literals a constant argument is drawn from (each a separate build).
CONSTANTS = ("0", "-0.0", "1", "-2.5", "20", "1e-40", "1e30", "-3.4028234e38")
VALUE_KINDS = ("const", "float", "scalar", "col", "row", "tile")
SCALAR_KINDS = ("const", "float", "scalar")
_DECLARATIONS = {
    "float": "param {}: float",
    "scalar": "param {}: scalar = 1.0",
    "col": "param {}: vector[N] = zeros",
    "row": "input {}: [M]",
    "tile": "input {}: [M, N]",
}
COMPARISONS = ("<", "<=", ">", ">=")

# The ops tested here: every one, the comparisons through `where`.
TESTED_OPS = sorted(name for name, op in ops.OPS.items() if op.group is not ops.Group.COMPARE)


def test_every_op_has_switch_points() -> None:
    assert set(SWITCH_POINTS) == set(TESTED_OPS)
    assert {n for n, op in ops.OPS.items() if op.group is ops.Group.COMPARE} == {
        ops.COMPARISONS[c] for c in COMPARISONS
    }


class _Builder:
    """Spec text -> (kernel, generated function), built once per session. Not formatted
    with black (formatting is most of a build's time and changes no behaviour)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache: dict[str, tuple[Kernel, Callable[..., torch.Tensor]]] = {}
        self.counter = itertools.count()

    def __call__(self, text: str) -> tuple[Kernel, Callable[..., torch.Tensor]]:
        if text not in self.cache:
            kernel = analyze(parse(text), "extreme.fuse", text)
            path = self.directory / f"extreme_{next(self.counter)}.py"
            path.write_text(emit_module(kernel), encoding="utf-8")
            self.cache[text] = (kernel, getattr(import_file(path), kernel.name))
        return self.cache[text]


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> _Builder:
    return _Builder(tmp_path_factory.mktemp("extremes"))


@dataclass
class _Call:
    """A spec and the arguments of one call of its function."""

    text: str
    kinds: dict[str, str]  # argument name -> kind
    M: int = 0
    N: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    floats: dict[str, float] = field(default_factory=dict)


@st.composite
def op_calls(draw: st.DrawFn, name: str, device: str) -> _Call:
    op = ops.OPS[name]
    kinds: dict[str, str] = {}
    declarations: list[str] = []

    def argument(arg: str, type_: ops.ArgType, default: float | None) -> str | None:
        if type_ is ops.ArgType.TILE:
            kind = "tile"
        elif type_ is ops.ArgType.SCALAR:
            kind = draw(
                st.sampled_from(SCALAR_KINDS + (("default",) if default is not None else ()))
            )
        else:
            kind = draw(st.sampled_from(VALUE_KINDS))
        if kind == "default":
            return None
        if kind == "const":
            return draw(st.sampled_from(CONSTANTS))
        kinds[arg] = kind
        declarations.append(_DECLARATIONS[kind].format(arg))
        return arg

    if name == "where":
        cmp = draw(st.sampled_from(COMPARISONS))
        c, a, b = (argument(f"arg_{p}", ops.ArgType.VALUE, None) for p in ("c", "a", "b"))
        step = f"acc = where(acc {cmp} {c}, {a}, {b})"
    elif name == "bias":
        step = "bias"
    else:
        args = []
        for p in op.params:
            value = argument(f"arg_{p.name}", p.type, p.default)
            if value is not None:
                args.append(f"{p.name}={value}")
        step = f"{name}({', '.join(args)})"
    gemm = "linear(in_features, out_features" + (")" if name == "bias" else ", bias=false)")
    text = "\n".join(
        [
            f"gemm: {gemm}",
            "precision: ieee",
            "input sel: [M]",
            "input xin: [M, N]",
            *declarations,
            f"epilogue: acc = where(sel > 0, acc, xin); {step}",
            "",
        ]
    )
    call = _Call(text, kinds)

    # values: a small pool of extreme values, so that arguments often meet equal ones
    # (comparisons and clamp bounds at ties), spread over every tensor
    pool = draw(st.lists(extreme_floats(SWITCH_POINTS[name]), min_size=1, max_size=10))
    call.M, call.N = draw(st.integers(1, 40)), draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    values = torch.tensor(pool, dtype=torch.float32)

    def fill(*shape: int) -> torch.Tensor:
        return values[torch.randint(len(pool), shape, generator=gen)].to(device)

    x = fill(call.M)
    x[: len(pool)] = values[: call.M].to(device)  # every pool value reaches acc
    sel = torch.where(torch.rand(call.M, generator=gen) < 0.7, 1.0, -1.0).to(device)
    # + 0.0: acc = 0 + x * 1 turns -0.0 into +0.0, where torch's x @ w^T keeps -0.0 (the
    # sign of a zero sum is the GEMM's own choice; -0.0 reaches the op through xin)
    call.tensors["x"] = (torch.where(sel > 0, x, 0.0) + 0.0).reshape(-1, 1)
    call.tensors["weight"] = torch.ones(call.N, 1, device=device)
    call.tensors["sel"], call.tensors["xin"] = sel, fill(call.M, call.N)
    if name == "bias":
        call.tensors["bias"] = fill(call.N)
    shapes = {"scalar": (), "col": (call.N,), "row": (call.M,), "tile": (call.M, call.N)}
    for arg, kind in kinds.items():
        if kind == "float":
            number = float(values[torch.randint(len(pool), (), generator=gen)])
            # Triton's interpreter passes a float argument's -0.0 as +0.0
            call.floats[arg] = 0.0 if device == "cpu" and number == 0.0 else number
        else:
            call.tensors[arg] = fill(*shapes[kind])
    return call


_FINITE, _POS_INF, _NEG_INF, _NAN = 0, 1, 2, 3


def _classes(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().double()
    cls = torch.full(t.shape, _FINITE, dtype=torch.int8)
    cls[t == math.inf] = _POS_INF
    cls[t == -math.inf] = _NEG_INF
    cls[torch.isnan(t)] = _NAN
    return cls


def _describe(kernel: Kernel, args: list[Any], floats: dict[str, float], m: int, n: int) -> str:
    """The operands of element [m, n], for a failure message."""
    parts = []
    for name, value in reference.bind(kernel, args, floats).items():
        if isinstance(value, torch.Tensor):
            if name in ("x", "weight"):
                if name == "x":
                    v: Any = value[m].tolist()
                else:  # weight: [N, K] (linear) or [K, N] (matmul)
                    v = (value[n] if kernel.gemm is Gemm.LINEAR else value[:, n]).tolist()
            elif value.dim() == 0:
                v = value.item()
            else:
                operand = kernel.operand(name)
                if operand.kind is Kind.TILE:
                    v = value[m, n].item()
                elif operand.kind is Kind.ROW:
                    v = value[m].item()
                else:
                    v = value[n].item()
        else:
            v = value
        parts.append(f"{name}={v!r}")
    return ", ".join(parts)


def _finite_operands(kernel: Kernel, args: list[Any], floats: dict[str, float]) -> torch.Tensor:
    """[M, N] bool: every operand element [m, n] depends on is finite."""
    bound = reference.bind(kernel, args, floats)
    x, weight = bound["x"], bound["weight"]
    w = weight if kernel.gemm is Gemm.MATMUL else weight.T
    ok = x.isfinite().all(1)[:, None] & w.isfinite().all(0)[None, :]
    for name, value in bound.items():
        if name in ("x", "weight"):
            continue
        if not isinstance(value, torch.Tensor):
            ok = ok & math.isfinite(value)
            continue
        operand = kernel.operand(name)
        finite = value.isfinite()
        if operand.kind is Kind.ROW:
            finite = finite.reshape(-1, 1)
        elif operand.kind is Kind.COL:
            finite = finite.reshape(1, -1)
        ok = ok & finite
    return ok.cpu()


def check_extremes(
    kernel: Kernel, out: torch.Tensor, args: list[Any], floats: dict[str, float]
) -> None:
    """The property of the module doc: NaN/Inf/finite as torch32 or exact; the oracle."""
    device = out.device.type
    # the references run on the CPU for GPU results too: torch's CUDA elu and celu give
    # NaN at x = 0 for an infinite or NaN alpha, its CPU ones (and kgen) give x
    args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    torch32 = reference.evaluate(kernel, *args, dtype=torch.float32, **floats)
    exact = testing.evaluations(kernel, *args, device=device, **floats)[0]
    saturated = torch.zeros(out.shape, dtype=torch.bool)
    if device == "cpu" and out.dtype == torch.bfloat16:
        # Triton's interpreter rounds fp32 to bf16 toward zero: past bf16's largest value
        # it stores that value where torch (and the GPU) round to Inf
        limit = torch.finfo(torch.bfloat16).max
        saturated = (out.abs() == limit) & exact.to(out.dtype).isinf() & exact.isfinite()
        torch32 = torch.where(torch32.isfinite(), torch32.clamp(-limit, limit), torch32)
        exact = torch.where(saturated, exact.clamp(-limit, limit), exact)
    torch32, exact = torch32.to(out.dtype), exact.to(out.dtype)
    got, want32, want = _classes(out), _classes(torch32), _classes(exact)
    # Finite operands whose intermediate values overflow: torch rounds a * b and c to
    # +-Inf one by one and gets Inf - Inf = NaN; the GPU contracts a * b + c into one
    # FMA and may give +-Inf instead (LANGUAGE.md, "Numbers"). Either is an overflow.
    contracted = (
        (want == _NAN)
        & ((got == _POS_INF) | (got == _NEG_INF))
        & _finite_operands(kernel, args, floats)
    )
    if device == "cpu":
        contracted[:] = False  # the interpreter rounds every operation: no contraction
    if bool(contracted.any()):
        note(f"{int(contracted.sum())} overflowing elements give Inf where torch gives NaN")
    bad = (got != want32) & (got != want) & ~contracted
    if bool(bad.any()):
        m, n = (int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements NaN/Inf/finite unlike torch: at "
            f"[{m}, {n}] kgen {out[m, n].item()!r}, torch fp32 {torch32[m, n].item()!r}, "
            f"exact {exact[m, n].item()!r} for {_describe(kernel, args, floats, m, n)}"
        )
    follows_torch32 = (got == want32) & (got != want)
    if bool(follows_torch32.any()):
        note(f"{int(follows_torch32.sum())} elements follow torch fp32 against the exact class")
    follows_torch32 |= contracted
    judged = torch.where(follows_torch32.to(out.device), exact.to(out.device), out)
    judged = torch.where(saturated.to(out.device), judged * math.inf, judged)
    # (the oracle evaluates where the operands are, and takes the GEMM's error for the
    # device from `judged`)
    mismatch = testing.check(kernel, judged, *args, **floats)
    if mismatch is not None:
        m, n = mismatch.index
        raise AssertionError(f"{mismatch} for {_describe(kernel, args, floats, m, n)}")


def _ordered_args(kernel: Kernel, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    names = ["x", "weight"] + (["bias"] if kernel.has_bias else [])
    return [tensors[n] for n in names + [t.name for t in kernel.tensors]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TESTED_OPS)
@given(data=st.data())
def test_op_extremes(name: str, device: str, build: _Builder, data: st.DataObject) -> None:
    call = data.draw(op_calls(name, device))
    note(call.text)
    kernel, function = build(call.text)
    args = _ordered_args(kernel, call.tensors)
    try:
        for dtype in (torch.float32, torch.float64):
            reference.evaluate(kernel, *args, dtype=dtype, **call.floats)
    except (ZeroDivisionError, RuntimeError) as exc:  # torch rejects celu(alpha=0), ...
        note(f"torch raised {exc!r}")
        reject()
    out = function(*args, **call.floats)
    check_extremes(kernel, out, args, call.floats)


# ---------------------------------------------------------------------------
# Whole specs

# Entries placed into the drawn tensors: non-finite values, signed zeros, subnormals,
# fp32's largest (Inf once rounded to fp16 or bf16). Not fp32's largest in x and the
# weight: a sum of products that overflow is Inf or NaN by the order of the sum and
# whether it fuses multiply and add (the per-op tests carry it through an exact GEMM).
SPECIAL_ENTRIES = [*NON_FINITE, 0.0, -0.0, 1e-40, FP32_MAX, -FP32_MAX]
OPERAND_ENTRIES = [*NON_FINITE, 0.0, -0.0, 1e-40]
# (x scale, weight scale) per dtype: entries up to 1e4 and, in fp32 and bf16, a GEMM
# near 1e36 that stays finite in fp32 for K <= 12.
SCALES = {
    torch.float32: [(1.0, 1.0), (1e4, 1.0), (1e4, 1e4), (1.0, 1e-4), (1e17, 1e17), (1e-20, 1e-20)],
    torch.bfloat16: [(1.0, 1.0), (1e4, 1.0), (1e4, 1e4), (1.0, 1e-4), (1e17, 1e17)],
    torch.float16: [(1.0, 1.0), (1e4, 1.0), (1.0, 1e-4), (1e2, 1e2)],
}
CPU_MAX_FIXED = 64  # larger fixed gemm sizes are too slow for the interpreter
# Known failures of the GEMM (kgen/lower/mainloop.py) for fp32 operands, as (device, precision,
# operand), seen on an H100: the three-product precisions split an operand into hi + lo
# pieces. bf16x3 (kgen's own split) makes an Inf operand hi = Inf, lo = Inf - Inf =
# NaN; on the GPU, fp32's largest value rounds up to an Inf hi piece in bf16x3 and
# tf32x3 (Triton's split), and the product is NaN where torch's is finite or Inf. (The
# interpreter multiplies tf32 modes in IEEE fp32, and its bf16 rounding truncates.)
# test_gemm_carries_extreme_operands shows each (strict xfail: fixing one makes it
# fail, to be removed here); test_spec_extremes leaves these operands out of x and
# weight meanwhile.
KNOWN_GEMM_FAILURES = {
    ("cpu", "bf16x3", "inf"),
    ("cuda", "bf16x3", "inf"),
    ("cuda", "bf16x3", "max"),
    ("cuda", "tf32x3", "max"),
}
_OPERANDS = {"inf": math.inf, "max": FP32_MAX}


def _size(fixed: str | int, draw: st.DrawFn) -> int:
    return fixed if isinstance(fixed, int) else draw(st.integers(1, 12))


@st.composite
def spec_calls(
    draw: st.DrawFn, kernel: Kernel, device: str
) -> tuple[list[torch.Tensor], dict[str, float]]:
    dtype = draw(st.sampled_from(DTYPES))
    M, K, N = (
        draw(st.integers(1, 12)),
        _size(kernel.in_features, draw),
        _size(kernel.out_features, draw),
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))

    entries, operand_entries = SPECIAL_ENTRIES, OPERAND_ENTRIES
    if device == "cpu" and (dtype == torch.bfloat16 or kernel.precision == "bf16x3"):
        # Triton's interpreter converts bf16 subnormals to and from fp32 wrongly (1e-40
        # -> 0, 1.01e-39 -> 4.4e-39), in 16-bit tensors and in bf16x3's pieces alike;
        # the GPU tier keeps them
        operand_entries = [v for v in operand_entries if v == 0.0 or not abs(v) < FP32_TINY]
        if dtype == torch.bfloat16:
            entries = [v for v in entries if v == 0.0 or not abs(v) < FP32_TINY]
    if dtype == torch.float32:
        for operand, value in _OPERANDS.items():
            if (device, kernel.precision, operand) in KNOWN_GEMM_FAILURES:
                operand_entries = [v for v in operand_entries if abs(v) != value]

    def tensor(
        shape: tuple[int, ...], scale: float, specials: int, choices: list[float] = entries
    ) -> torch.Tensor:
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        flat = t.reshape(-1)
        for _ in range(min(specials, flat.numel())):
            i = int(torch.randint(flat.numel(), (), generator=gen))
            flat[i] = choices[int(torch.randint(len(choices), (), generator=gen))]
        return t.to(dtype).to(device)

    xs, ws = draw(st.sampled_from(SCALES[dtype]))
    w_shape = (N, K) if kernel.gemm is Gemm.LINEAR else (K, N)
    args = [
        tensor((M, K), xs, draw(st.integers(0, 3)), operand_entries),
        tensor(w_shape, ws, draw(st.integers(0, 2)), operand_entries),
    ]
    if kernel.has_bias:
        args.append(tensor((N,), draw(st.sampled_from([1.0, 1e4])), draw(st.integers(0, 1))))
    shapes = {Kind.TILE: (M, N), Kind.COL: (N,), Kind.ROW: (M,), Kind.SCALAR: ()}
    for t in kernel.tensors:
        scale = draw(st.sampled_from([1.0, 1e4]))
        args.append(tensor(shapes[t.kind], scale, draw(st.integers(0, 1))))
    floats: dict[str, float] = {}
    for f in kernel.floats:
        default = f.default if isinstance(f.default, float) else None
        if default is not None and draw(st.booleans()):
            continue
        value = draw(extreme_floats())
        floats[f.name] = 0.0 if device == "cpu" and value == 0.0 else value
    return args, floats


def _runnable(name: str, device: str) -> bool:
    kernel = committed(name)[0].kernel
    fixed = [s for s in (kernel.in_features, kernel.out_features) if isinstance(s, int)]
    return device == "cuda" or all(s <= CPU_MAX_FIXED for s in fixed)


# Specs with row operations are checked by tests/test_rows.py (their extreme values,
# Inf and NaN across a row, are not covered yet).
_ELEMENTWISE_SPECS = [
    p.stem for p in SPECS if not any(re.search(rf"\b{op}\b", p.read_text()) for op in ops.ROW_OPS)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", _ELEMENTWISE_SPECS)
@given(data=st.data())
def test_spec_extremes(name: str, device: str, data: st.DataObject) -> None:
    if not _runnable(name, device):
        pytest.skip("fixed gemm sizes too large for the interpreter")
    compiled, module = committed(name)
    kernel = compiled.kernel
    args, floats = data.draw(spec_calls(kernel, device))
    out = getattr(module, kernel.name)(*args, **floats)
    check_extremes(kernel, out, args, floats)


def test_exact_gemm_carries_every_value(build: _Builder) -> None:
    """The per-op tests' premise: with K = 1 and weight = 1, acc is x exactly (Inf,
    NaN, subnormals and fp32's largest included; -0.0 becomes +0.0 in acc = 0 + x)."""
    values = [*NON_FINITE, 0.0, -0.0, 1e-45, 1e-40, FP32_TINY, 1.5, FP32_MAX, -FP32_MAX]
    text = "gemm: linear(in_features, out_features, bias=false)\nprecision: ieee\n"
    _kernel, function = build(text + "epilogue: add(0)\n")
    x = torch.tensor(values).reshape(-1, 1)
    out = function(x, torch.ones(3, 1))
    expected = (x + 0.0).expand(-1, 3)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


# ---------------------------------------------------------------------------
# Empty problems: M = 0 gives an empty output, K = 0 the epilogue of a zero GEMM


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["gated_residual", "clamp_select", "math_ops", "activation_zoo"])
@pytest.mark.parametrize("shape", [(0, 5, 7), (4, 5, 0), (0, 5, 0), (4, 0, 7), (4, 0, 0)])
def test_empty_problems(
    name: str, dtype: torch.dtype, device: str, shape: tuple[int, int, int]
) -> None:
    M, N, K = shape
    compiled, module = committed(name)
    kernel = compiled.kernel
    gen = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(dtype).to(device)

    args = [tensor(M, K), tensor(N, K) if kernel.gemm is Gemm.LINEAR else tensor(K, N)]
    if kernel.has_bias:
        args.append(tensor(N))
    shapes = {Kind.TILE: (M, N), Kind.COL: (N,), Kind.ROW: (M,), Kind.SCALAR: ()}
    args += [tensor(*shapes[t.kind]) for t in kernel.tensors]
    out = getattr(module, kernel.name)(*args)
    assert out.shape == (M, N) and out.device == args[0].device
    output = getattr(torch, kernel.output_dtype) if kernel.output_dtype else dtype
    assert out.dtype == output
    # as torch gives: x @ w^T of an empty K is zeros; the epilogue of those
    expected = reference.evaluate(kernel, *args, dtype=torch.float32).to(out.dtype)
    assert torch.equal(out.isnan(), expected.isnan())
    if out.numel() > 0:  # (kgen.testing's error bound fails on an empty tensor)
        testing.assert_matches_reference(kernel, out, *args)
        check_extremes(kernel, out, args, {})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["ieee", "tf32", "tf32x3", "bf16x3"])
@pytest.mark.parametrize("operand", sorted(_OPERANDS))
def test_gemm_carries_extreme_operands(
    operand: str, precision: str, device: str, build: _Builder, request: pytest.FixtureRequest
) -> None:
    """x @ w^T with an Inf or fp32's largest value in x or w, as torch gives it: +-Inf, NaN
    where Inf meets 0 or -Inf, finite where the product is."""
    if (device, precision, operand) in KNOWN_GEMM_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason="see KNOWN_GEMM_FAILURES"))
    v = _OPERANDS[operand]
    text = f"gemm: linear(in_features, out_features, bias=false)\nprecision: {precision}\n"
    kernel, function = build(text + "epilogue: add(0)\n")
    x = torch.tensor([[v, 1.0], [1.0, -v], [0.0, 2.0], [0.5, 0.25]], device=device)
    weight = torch.tensor([[1.0, 0.5], [0.999, 1.001], [-1.5, 0.0], [0.0, v]], device=device)
    args = [x, weight]
    check_extremes(kernel, function(*args), args, {})


def test_gemm_underflow_is_within_the_oracles_bound() -> None:
    """Products of ~1e-20 operands fall below fp32's normal range, where rounding is
    absolute; an epilogue scaling acc by FLT_MAX shows it (found by a fresh-clone run
    under Triton 3.8). The oracle must accept the kernel's exact-as-fp32 answer."""
    compiled, module = committed("gated_residual")
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 8, generator=gen) * 1e-20
        weight = torch.randn(8, 12, generator=gen) * 1e-20
        gamma = torch.full((12,), FP32_MAX)
        alpha, gate = torch.tensor(0.2597), torch.tensor([0.958])
        residual = torch.randn(1, 12, generator=gen) * 0.1
        out = module.gated_residual(x, weight, gamma, alpha, gate, residual)
        args = (x, weight, gamma, alpha, gate, residual)
        assert testing.check(compiled.kernel, out, *args) is None


def test_values_below_fp32s_range_are_zero_in_the_oracle(tmp_path: Path) -> None:
    """A value the exact answer puts below fp32's smallest subnormal is 0 in the kernel,
    and log(0) is -Inf: the oracle must say so too (a fresh clone's test_chains drew
    `gelu; abs; residual(acc); abs; log`, exact -159.4, kernel -Inf)."""
    from helpers import build_and_import

    spec = "param a: float\nepilogue: bias; mul(a); mul(a); log\n"
    compiled, module = build_and_import(spec, tmp_path)
    fn = getattr(module, compiled.kernel.name)
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.rand(3, 4, generator=gen) + 0.5, torch.rand(5, 4, generator=gen) + 0.5
    bias = torch.rand(5, generator=gen)
    out = fn(x, weight, bias, a=1e-30)  # acc ~ 2, acc * 1e-30 * 1e-30 ~ 1e-60: fp32 0
    assert torch.isneginf(out).all()
    assert testing.check(compiled.kernel, out, x, weight, bias, a=1e-30) is None
    out = fn(x, weight, bias, a=1e-20)  # ~1e-40: a subnormal, log is finite
    assert torch.isfinite(out).all()
    assert testing.check(compiled.kernel, out, x, weight, bias, a=1e-20) is None
    # the flushed evaluation keeps scalar arguments: celu's alpha has no flushed meaning
    compiled, module = build_and_import("param a: float\nepilogue: bias; celu(alpha=a)\n", tmp_path)
    out = getattr(module, compiled.kernel.name)(x, weight, bias, a=5.1e-39)
    assert testing.check(compiled.kernel, out, x, weight, bias, a=5.1e-39) is None


def test_softplus_product_below_fp32s_range_is_zero(tmp_path) -> None:
    """beta * x below half fp32's smallest subnormal is 0 in any fp32 arithmetic, the
    kernel's and PyTorch's fp32 softplus alike: with threshold 0 both take
    log1p(exp(0)) / beta, where a float64 product (2.7e-68 > 0) would pick x. The oracle
    holds the kernel to that (a Hypothesis case of test_op_extremes found it)."""
    text = (
        "gemm: linear(in_features, out_features, bias=false)\n"
        "param b: float\nepilogue: softplus(beta=b, threshold=0)\n"
    )
    compiled, module = build_and_import(text, tmp_path)
    tiny = 1.6351100017232874e-34
    x, w = torch.full((3, 1), tiny), torch.ones(2, 1)
    out = module.spec(x, w, b=tiny)
    torch_fp32 = torch.nn.functional.softplus(x @ w.T, beta=tiny, threshold=0.0)
    assert torch.isfinite(out).all() and torch.allclose(out, torch_fp32, rtol=1e-6)
    testing.assert_matches_reference(compiled.kernel, out, x, w, b=tiny)
