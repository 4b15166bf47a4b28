"""Row operations (LANGUAGE.md, "Row operations"): both lowering strategies.

N up to 256 keeps every segment in one tile (in registers); wider rows run in two
passes (kgen/lower/rows.py). Each committed row-op spec is checked at sizes on both sides
of that line, and Hypothesis composes random chains of row and elementwise steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICES, build_and_import, committed
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from strategies import column_multiple

from kgen import testing
from kgen.errors import SpecError
from kgen.ir import Kernel, Kind
from kgen.lower.steps import plan_function

ROW_SPECS = [
    "linear_softmax",
    "linear_gelu_softmax",
    "linear_groupnorm_swish",
    "linear_logsumexp",
    "row_layernorm",
    "row_log_softmax",
    "row_pools",
    "row_rms",
    "row_sums",
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _args(kernel: Kernel, M: int, N: int, K: int, dtype: torch.dtype, device: str, seed: int):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)

    args = [randn(M, K) * 2, randn(N, K) / math.sqrt(K)]
    if kernel.has_bias:
        args.append(randn(N))
    for t in kernel.tensors:
        width = N // t.pool
        shape = {Kind.TILE: (M, width), Kind.COL: (width,), Kind.ROW: (M,), Kind.SCALAR: ()}
        args.append(randn(*shape[t.kind]))
    return args


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ROW_SPECS)
def test_row_spec_both_strategies(name: str, dtype: torch.dtype, device: str) -> None:
    compiled, module = committed(name)
    kernel = compiled.kernel
    fn = getattr(module, kernel.name)
    multiple = column_multiple(kernel)
    plan = plan_function(kernel)
    sizes = [multiple, 2 * multiple] if multiple > 1 else [7, 37, 256, 300, 640]
    strategies = set()
    for i, N in enumerate(sizes):
        M, K = 5 + 7 * i, 3 + 5 * i
        args = _args(kernel, M, N, K, dtype, device, seed=i)
        out = fn(*args)
        testing.assert_matches_reference(kernel, out, *args)
        strategies.add(plan(N, 64)[0] >= 0)
    if multiple == 1:
        assert strategies == {False, True}  # in registers and in two passes


_ROW_STEPS = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "logsumexp(keepdim=false)",
    "row_sum",
    "row_mean(keepdim=false)",
    "row_max",
    "row_min",
    "layernorm",
    "layernorm(eps=0.5)",
    "groupnorm(2)",
    "groupnorm(3, eps=1e-3)",
    "avgpool(2)",
    "avgpool(3)",
    "maxpool(2)",
    "maxpool(4)",
]
_ELEMENTWISE = ["relu", "gelu", "tanh", "scale(3)", "add(-0.5)", "sigmoid", "square", "exp"]


@st.composite
def _chains(draw: st.DrawFn) -> str:
    steps = ["bias"]
    for _ in range(draw(st.integers(1, 3))):
        steps += draw(st.lists(st.sampled_from(_ELEMENTWISE), max_size=2))
        steps.append(draw(st.sampled_from(_ROW_STEPS)))
    steps += draw(st.lists(st.sampled_from(_ELEMENTWISE), max_size=2))
    return "epilogue: " + "; ".join(steps) + "\n"


_BUILT: dict[str, tuple | None] = {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_chains(), data=st.data())
def test_random_row_chains(text: str, data: st.DataObject, tmp_path_factory) -> None:
    if text not in _BUILT:
        try:
            _BUILT[text] = build_and_import(text, tmp_path_factory.mktemp("rows"))
        except SpecError as error:
            # pools and groupnorm after a reduction: refused with a positioned error
            assert "value per row" in error.message or "one column" in error.message, error.message
            _BUILT[text] = None
    assume(_BUILT[text] is not None)
    compiled, module = _BUILT[text]
    kernel = compiled.kernel
    multiple = column_multiple(kernel)
    wide = data.draw(st.booleans(), label="wide")
    N = data.draw(st.integers(257, 640) if wide else st.integers(1, 96), label="N")
    N = max(1, N // multiple) * multiple
    M, K = data.draw(st.integers(1, 12), label="M"), data.draw(st.integers(1, 20), label="K")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    args = _args(kernel, M, N, K, dtype, "cpu", seed=data.draw(st.integers(0, 99)))
    try:
        out = getattr(module, kernel.name)(*args)
    except ValueError as error:
        # the plan refuses combinations it cannot run at this N (LANGUAGE.md): that must
        # be a message about the row operations, decided before any launch
        note(str(error))
        message = str(error)
        assert "tile" in message or "groups" in message or "one column" in message, message
        return
    testing.assert_matches_reference(kernel, out, *args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "spec", ["epilogue: bias; exp; layernorm\n", "epilogue: bias; exp; groupnorm(1)\n"]
)
def test_two_pass_norms_store_a_large_deviation_in_fp16(spec: str, device: str, tmp_path) -> None:
    """Two passes (257 columns) store each value relative to its tile's statistics in
    the output's dtype: a deviation of e^12 overflowed fp16 (-inf out) where the norm
    is finite; divided by the tile's spread it fits (found by test_random_row_chains)."""
    compiled, module = build_and_import(spec, tmp_path, "spec.fuse")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=generator).half().to(device)
    weight = (torch.randn(257, 16, generator=generator) * 0.8).half().to(device)
    bias = torch.zeros(257, dtype=torch.float16, device=device)
    bias[162] = 12.0
    args = [x, weight, bias]
    if "groupnorm" in spec:
        args += [torch.ones(257, dtype=torch.float16, device=device), torch.zeros_like(bias)]
    out = getattr(module, compiled.kernel.name)(*args)
    assert torch.isfinite(out).all()
    testing.assert_matches_reference(compiled.kernel, out, *args)
    # a tile whose variance underflows to 0 (m2 / count): spread 1, not 0 (NaN out)
    args[0] = torch.zeros_like(x)
    bias[162], bias[5] = 0.0, 4e-23
    out = getattr(module, compiled.kernel.name)(*args)
    assert not torch.isnan(out).any()
    testing.assert_matches_reference(compiled.kernel, out, *args)


def test_output_shapes() -> None:
    cases = {
        "epilogue: bias; softmax": (6, 40),
        "epilogue: bias; maxpool(3)": (6, 13),
        "epilogue: bias; logsumexp": (6, 1),
        "epilogue: bias; row_max(keepdim=false)": (6,),
        "epilogue: bias; row_max(keepdim=false); acc = acc * 2": (6,),
        "epilogue: bias; avgpool(4); avgpool(2); row_sum": (6, 1),
    }
    for text, shape in cases.items():
        compiled, module = build_and_import(text + "\n", _tmp())
        x, w, b = torch.randn(6, 5), torch.randn(40, 5), torch.randn(40)
        out = getattr(module, compiled.kernel.name)(x, w, b)
        assert tuple(out.shape) == shape, text


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


def test_runtime_errors_before_launch() -> None:
    compiled, module = committed("linear_groupnorm_swish")
    fn = getattr(module, compiled.kernel.name)
    x, w, b = torch.randn(4, 8), torch.randn(300, 8), torch.randn(300)
    with pytest.raises(ValueError, match="groupnorm"):
        fn(x, w, b, torch.ones(300), torch.zeros(300))
    compiled, module = build_and_import("epilogue: bias; softmax; maxpool(2)\n", _tmp())
    fn = getattr(module, compiled.kernel.name)
    x, w, b = torch.randn(4, 8), torch.randn(600, 8), torch.randn(600)
    with pytest.raises(ValueError, match="two passes"):
        fn(x, w, b)
    compiled, module = committed("linear_logsumexp")
    fn = getattr(module, compiled.kernel.name)
    with pytest.raises(ValueError, match="at least one column"):
        fn(torch.randn(4, 8), torch.randn(0, 8), torch.randn(0))


def test_groupnorm_module_matches_torch() -> None:
    """ModelNew owns groupnorm's affine parameters as nn.GroupNorm does."""
    _compiled, module = committed("linear_groupnorm_swish")
    torch.manual_seed(0)
    model = module.ModelNew(16, 512)
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 512)
    norm = torch.nn.GroupNorm(256, 512)
    assert torch.equal(model.weight, linear.weight)
    assert torch.equal(model.groupnorm_weight, norm.weight)
    assert torch.equal(model.groupnorm_bias, norm.bias)
    x = torch.randn(3, 16)
    want = torch.nn.functional.silu(norm(linear(x)))
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("N", [100, 200, 256])
def test_a_whole_row_tile_keeps_the_configurations_budget(N: int) -> None:
    """Widening the tile to a whole row keeps BLOCK_M * BLOCK_N (accumulator registers)
    and, down to BLOCK_K = 16, (BLOCK_M + BLOCK_N) * BLOCK_K (shared memory per stage):
    a configuration that fits before widening still fits (an fp32 128x128x64 one ran
    out of shared memory on the H100 once widened to 64x256x64)."""
    from strategies import GPU_CONFIGS

    _, module = committed("linear_softmax")
    x, w, b = torch.randn(3, 64), torch.randn(N, 64), torch.randn(N)
    for config in GPU_CONFIGS:
        bm, bn, bk = config[:3]
        plan = module._OP.plan(x, w, b, config=config, tma=False)
        seen = plan.launches[0].arguments()
        wm, wn, wk = seen["BLOCK_M"], seen["BLOCK_N"], seen["BLOCK_K"]  # widened
        assert isinstance(wm, int) and isinstance(wn, int) and isinstance(wk, int)
        assert wn >= N and wm * wn <= max(bm * bn, 16 * wn)
        assert (wm + wn) * wk <= (bm + bn) * bk or wk == 16
