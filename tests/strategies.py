"""Hypothesis strategies for kgen's tests, built from small named pieces.

Shapes favour the sizes that break tiled kernels (1, primes, tile sizes +- 1);
tensors come in every layout (contiguous, transposed, strided, offset); launch
configurations are drawn so an interpreted case stays within a fixed budget of
program iterations; random specs are drawn from the op registry, so a new op is
fuzzed as soon as it has an entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import triton
from hypothesis import strategies as st

from kgen import ops
from kgen.configs import LOOPS
from kgen.ir import Gemm, Kernel, Kind

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
EDGE_SIZES = [
    1,
    2,
    3,
    5,
    7,
    13,
    15,
    16,
    17,
    31,
    32,
    33,
    47,
    63,
    64,
    65,
    97,
    127,
    128,
    129,
    191,
    199,
]

# The interpreter runs ~1-3 ms per program and k-step: keep a case near 50 of them.
CPU_MAX_SIZE = 200
CPU_ITERATION_BUDGET = 48
CPU_PROGRAM_BUDGET = 16
BLOCKS = (16, 32, 64, 128)
# On the GPU every distinct configuration is a compile: draw from a fixed pool.
GPU_MAX_SIZE = 600
GPU_CONFIGS = [
    (16, 16, 16, 1, 4, 2, "pointer", 1),
    (32, 64, 32, 2, 4, 3, "pointer", 1),
    (64, 64, 64, 8, 4, 3, "pointer", 1),
    (64, 128, 32, 8, 8, 3, "pointer", 1),
    (128, 128, 64, 8, 8, 3, "pointer", 1),
    (128, 64, 32, 4, 4, 2, "pointer", 1),
    (64, 64, 64, 8, 4, 3, "tma", 1),
    (32, 32, 64, 1, 4, 2, "tma", 1),
    (128, 128, 64, 8, 8, 3, "persistent", 1),
    (128, 256, 32, 8, 8, 3, "persistent", 1),
    (64, 128, 64, 4, 4, 3, "persistent", 1),
    # split-K (kgen/configs.py)
    (32, 32, 64, 1, 4, 3, "pointer", 4),
    (64, 64, 32, 8, 4, 3, "tma", 2),
    (16, 16, 16, 1, 4, 2, "pointer", 8),
    # the transposed product (few rows)
    (16, 64, 64, 8, 4, 4, "swap", 1),
    (32, 128, 32, 8, 4, 6, "swap", 2),
]


def sizes(max_size: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([s for s in EDGE_SIZES if s <= max_size]), st.integers(1, max_size)
    )


@dataclass(frozen=True)
class Problem:
    M: int
    N: int
    K: int
    dtype: torch.dtype
    config: tuple[int, int, int, int, int, int, str] | None  # None: the module's own choice
    device: str


@st.composite
def configs(draw: st.DrawFn, M: int, N: int, K: int, device: str) -> tuple[int, ...]:
    if device == "cuda":
        return draw(st.sampled_from(GPU_CONFIGS))
    choices = [
        (bm, bn, bk)
        for bm in BLOCKS
        for bn in BLOCKS
        for bk in BLOCKS
        if triton.cdiv(M, bm) * triton.cdiv(N, bn) <= CPU_PROGRAM_BUDGET
        and triton.cdiv(M, bm) * triton.cdiv(N, bn) * triton.cdiv(K, bk) <= CPU_ITERATION_BUDGET
    ]
    bm, bn, bk = draw(st.sampled_from(choices))
    group_m = draw(st.sampled_from([1, 2, 8]))
    warps, stages = draw(st.sampled_from([4, 8])), draw(st.sampled_from([2, 3, 4]))
    loop = draw(st.sampled_from(LOOPS))
    # split-K: any count works, more splits than k-steps included (empty splits add 0)
    split_k = 1 if loop == "persistent" else draw(st.sampled_from([1, 1, 2, 3]))
    return (bm, bn, bk, group_m, warps, stages, loop, split_k)


def column_multiple(kernel: Kernel) -> int:
    """What N must be a multiple of: groupnorm splits its columns into equal groups."""
    multiple = 1
    for instr in kernel.row_ops:
        if instr.op == "groupnorm":
            multiple = math.lcm(multiple, instr.size * instr.pool)
    return multiple


def column_minimum(kernel: Kernel) -> int:
    """The least N a reduction after pools needs (one column must be left)."""
    minimum = 1
    for instr in kernel.row_ops:
        x = kernel.value(instr.args[0])
        if ops.ROW_OPS[instr.op].reduces and x.kind is Kind.TILE:
            minimum = max(minimum, x.pool)
    return minimum


@st.composite
def problems(
    draw: st.DrawFn, device: str, dtypes: list[torch.dtype] = DTYPES, kernel: Kernel | None = None
) -> Problem:
    limit = GPU_MAX_SIZE if device == "cuda" else CPU_MAX_SIZE
    M, N, K = draw(sizes(limit)), draw(sizes(limit)), draw(sizes(limit))
    if kernel is not None and column_multiple(kernel) > 1:
        N = column_multiple(kernel) * draw(st.integers(1, 2))
    if kernel is not None:
        N = max(N, column_minimum(kernel))
    dtype = draw(st.sampled_from(dtypes))
    config = draw(st.none() | configs(M, N, K, device))
    if config is None and device == "cpu":
        # the module's own heuristic: affordable only when it yields few programs
        from kgen.configs import choose_config

        bm, bn, bk, *_ = choose_config(M, N, K, dtype)
        cost = triton.cdiv(M, bm) * triton.cdiv(N, bn) * triton.cdiv(K, bk)
        if cost > CPU_ITERATION_BUDGET:
            config = draw(configs(M, N, K, device))
    return Problem(M, N, K, dtype, config, device)  # type: ignore[arg-type]


LAYOUTS = ["contiguous", "transposed", "strided", "offset"]


@st.composite
def tensors(
    draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype, device: str, scale: float = 1.0
) -> torch.Tensor:
    """Fresh random values (never all zeros) in a drawn memory layout."""
    seed = draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    values = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    layout = draw(st.sampled_from(LAYOUTS)) if len(shape) >= 1 else "contiguous"
    if layout == "transposed" and len(shape) == 2:
        t = values.T.contiguous().to(device).T
    elif layout == "strided":
        big = torch.zeros([2 * s for s in shape], dtype=dtype)
        view = big[tuple(slice(None, None, 2) for _ in shape)] if shape else big
        view.copy_(values)
        t = big.to(device)[tuple(slice(None, None, 2) for _ in shape)]
    elif layout == "offset":
        flat = torch.zeros(values.numel() + 7, dtype=dtype)
        flat[7:] = values.reshape(-1)
        t = flat.to(device)[7:].view(shape)
    else:
        t = values.to(device)
    assert t.shape == values.shape
    return t


SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, -1e-30, 1e4, -1e4, 1e30, -1e30]


def float_values(default: float | None) -> st.SearchStrategy[float]:
    moderate = st.floats(-8, 8, allow_nan=False, width=32)
    choices = [moderate, st.sampled_from(SPECIAL_FLOATS), st.floats(-1e4, 1e4, width=32)]
    if default is not None:
        choices.insert(0, st.just(default))
    return st.one_of(*choices)


@st.composite
def call_args(draw: st.DrawFn, kernel: Kernel, p: Problem) -> tuple[list[Any], dict[str, float]]:
    """Arguments for the generated function of `kernel`: (positional, floats)."""
    scale = draw(st.sampled_from([0.1, 1.0, 1.0, 4.0]))
    x = draw(tensors((p.M, p.K), p.dtype, p.device, scale))
    w_shape = (p.N, p.K) if kernel.gemm is Gemm.LINEAR else (p.K, p.N)
    weight = draw(tensors(w_shape, p.dtype, p.device, 1 / math.sqrt(max(p.K, 1))))
    args: list[Any] = [x, weight]
    shapes = {Kind.TILE: (p.M, p.N), Kind.COL: (p.N,), Kind.ROW: (p.M,), Kind.SCALAR: ()}
    if kernel.has_bias:
        args.append(draw(tensors((p.N,), p.dtype, p.device)))
    for t in kernel.tensors:
        dtype = draw(st.sampled_from(DTYPES))
        shape = shapes[t.kind] if t.pool == 1 else (p.N // t.pool,)
        args.append(draw(tensors(shape, dtype, p.device)))
    floats: dict[str, float] = {}
    for f in kernel.floats:
        default = f.default if isinstance(f.default, float) else None
        if default is not None and draw(st.booleans()):
            continue  # leave it to the default
        value = draw(float_values(default))
        if p.device == "cpu" and value == 0.0:
            # Triton's interpreter passes float arguments as Python floats and turns a
            # zero into +0.0; on the GPU -0.0 arrives intact (the GPU tier draws it).
            value = 0.0
        floats[f.name] = value
    return args, floats


# ---------------------------------------------------------------------------
# Random specs from the op registry

_LITERALS = st.sampled_from(["0.5", "2", "-1", "0.1", "3", "-0.25", "1e-3", "1.5"])
# scalar arguments that would make torch raise or divide by zero
_NONZERO = {("softplus", "beta"), ("celu", "alpha")}


@dataclass
class _Scope:
    names: dict[Kind, list[str]]  # declared names by kind
    bound: list[str]  # names bound in the epilogue: values of unknown kind

    def of(self, kinds: list[Kind]) -> list[str]:
        return [n for k in kinds for n in self.names.get(k, [])]


def _names_or(names: list[str], other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(names) | other if names else other


@st.composite
def _leaf(draw: st.DrawFn, scope: _Scope, kind: ops.ArgType) -> str:
    if kind is ops.ArgType.SCALAR:
        return draw(_names_or(scope.of([Kind.SCALAR]), _LITERALS))
    if kind is ops.ArgType.TILE:
        return draw(st.sampled_from(scope.of([Kind.TILE])))
    return draw(_names_or(scope.of(list(Kind)) + scope.bound, _LITERALS))


_UNARY_FUNCS = sorted(
    n for n, op in ops.OPS.items() if op.public and not op.params and not op.implicit and op.step
)


@st.composite
def _expr(draw: st.DrawFn, scope: _Scope, depth: int) -> str:
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(_leaf(scope, ops.ArgType.VALUE))
    form = draw(st.sampled_from(["binary", "unary", "where", "paren"]))
    if form == "binary":
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        return f"{draw(_expr(scope, depth - 1))} {op} {draw(_expr(scope, depth - 1))}"
    if form == "unary":
        return f"{draw(st.sampled_from(_UNARY_FUNCS))}({draw(_expr(scope, depth - 1))})"
    if form == "where":
        cmp = draw(st.sampled_from(["<", "<=", ">", ">="]))
        cond = f"{draw(_expr(scope, 0))} {cmp} {draw(_expr(scope, 0))}"
        return f"where({cond}, {draw(_expr(scope, depth - 1))}, {draw(_expr(scope, depth - 1))})"
    return f"-({draw(_expr(scope, depth - 1))})"


_STEP_OPS = sorted(n for n, op in ops.OPS.items() if op.public and op.step) + sorted(ops.ALIASES)


@st.composite
def _op_step(draw: st.DrawFn, scope: _Scope, has_bias: bool) -> str:
    name = draw(st.sampled_from([n for n in _STEP_OPS if has_bias or n != "bias"]))
    opdef = ops.lookup(name)
    assert opdef is not None
    args = []
    use_keywords = draw(st.booleans())
    for param in opdef.params:
        if param.default is not None and draw(st.booleans()):
            use_keywords = True  # a skipped argument forces keywords after it
            continue
        if param.type is ops.ArgType.SCALAR and (opdef.name, param.name) in _NONZERO:
            value = draw(st.sampled_from(["0.5", "2", "1.5"]))
        elif param.type is ops.ArgType.VALUE:
            value = draw(_expr(scope, 1))
        else:
            value = draw(_leaf(scope, param.type))
        args.append(f"{param.name}={value}" if use_keywords else value)
    return f"{name}({', '.join(args)})" if args or draw(st.booleans()) else name


@st.composite
def random_specs(draw: st.DrawFn) -> str:
    """A valid spec: a gemm, some operands of every kind, and 1-6 random steps."""
    lines = []
    form = draw(st.sampled_from(["linear", "linear_nobias", "matmul"]))
    lines.append(
        {
            "linear": "gemm: linear(in_features, out_features)",
            "linear_nobias": "gemm: linear(in_features, out_features, bias=false)",
            "matmul": "gemm: matmul(in_features, out_features)",
        }[form]
    )
    scope = _Scope({Kind.SCALAR: [], Kind.COL: [], Kind.ROW: [], Kind.TILE: ["acc"]}, [])
    for i in range(draw(st.integers(0, 2))):
        default = draw(st.sampled_from(["", " = 0.5", " = -2", " = 3"]))
        lines.append(f"param f{i}: float{default}")
        scope.names[Kind.SCALAR].append(f"f{i}")
    if draw(st.booleans()):
        lines.append(f"param v: vector[N] = {draw(st.sampled_from(['randn', 'ones', '0.5']))}")
        scope.names[Kind.COL].append("v")
    if draw(st.booleans()):
        lines.append("param s: scalar = 1.5")
        scope.names[Kind.SCALAR].append("s")
    for name, dims, kind in (("r", "M, N", Kind.TILE), ("c", "N", Kind.COL), ("q", "M", Kind.ROW)):
        if draw(st.booleans()):
            lines.append(f"input {name}: [{dims}]")
            scope.names[kind].append(name)
    if draw(st.booleans()):
        lines.append(f"precision: {draw(st.sampled_from(['tf32x3', 'bf16x3', 'ieee', 'tf32']))}")
    if draw(st.booleans()):
        lines.append(f"output: {draw(st.sampled_from(['float16', 'bfloat16', 'float32']))}")
    steps = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["op", "op", "op", "bind", "acc"]))
        if kind == "op":
            steps.append(draw(_op_step(scope, form == "linear")))
        elif kind == "bind":
            steps.append(f"z{i} = {draw(_expr(scope, 2))}")
            scope.bound.append(f"z{i}")
        else:
            # acc stays an [M, N] value: later steps (residual(acc), ...) may need one
            op = draw(st.sampled_from(["+", "*", "-"]))
            steps.append(f"acc = {draw(_expr(scope, 2))} {op} acc")
    lines.append("epilogue: " + "; ".join(steps))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Extreme values (tests/test_extremes.py)

FP32_MAX = float(torch.finfo(torch.float32).max)
FP32_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal
# Magnitudes every op meets: zero, subnormals, the smallest normal, huge values up to
# fp32's largest; each is drawn with either sign and a few ulps either side.
EXTREME_MAGNITUDES = [
    0.0,
    1e-45,
    1e-40,
    FP32_TINY,
    1e-30,
    1e-7,
    0.5,
    1.0,
    2.0,
    1e4,
    1e6,
    1e30,
    3e38,
    FP32_MAX,
]
NON_FINITE = [math.inf, -math.inf, math.nan]


def ulps_from(value: float, ulps: int) -> float:
    """The fp32 value `ulps` steps above (below, if negative) fp32(value)."""
    t = torch.tensor(value, dtype=torch.float32)
    target = torch.tensor(math.copysign(math.inf, ulps), dtype=torch.float32)
    for _ in range(abs(ulps)):
        t = torch.nextafter(t, target)
    return float(t)


@st.composite
def near(draw: st.DrawFn, points: tuple[float, ...], ulps: int = 3) -> float:
    """One of `points` (or its negation), moved by up to `ulps` fp32 ulps."""
    value = draw(st.sampled_from(points)) * draw(st.sampled_from([1.0, -1.0]))
    return ulps_from(value, draw(st.integers(-ulps, ulps)))


def extreme_floats(points: tuple[float, ...] = ()) -> st.SearchStrategy[float]:
    """fp32 values for breaking an op: extreme magnitudes, +-Inf, NaN, -0.0, the op's
    switch `points` +- a few ulps, anything fp32 holds, and moderate values."""
    return st.one_of(
        near((*EXTREME_MAGNITUDES, *points)),
        near(points or (0.0,)),
        st.sampled_from([*NON_FINITE, -0.0]),
        st.floats(width=32),
        st.floats(-100, 100, width=32),
    )
