"""kgen.runtime, the host side every generated module imports: its checks, the plan a
call keeps per layout, the lean launch, `[*, K]` inputs, autocast, and the
`torch.ops.kgen` operator that torch.compile and torch.export see.

The plan cache must never change a result: a call that reuses a plan computes, bit for
bit, what a fresh plan computes (and on the GPU launches the very binary that
Triton's `kernel[grid](...)` would), whatever the dtypes, strides, alignments, offsets,
shapes and configurations."""

from __future__ import annotations

import gc
import warnings
import weakref
from typing import Any

import pytest
import torch
from helpers import DEVICES, SPECS, build_and_import, committed
from hypothesis import given, note
from hypothesis import strategies as st
from strategies import call_args, configs, problems
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend

from kgen import testing
from kgen.check import check_source
from kgen.runtime import checks, devices, launch
from kgen.runtime.launch import Plan

SEEDS = ["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu"]
# specs with every kind of operand: [M] and [M, N] inputs, vectors, scalars, row ops
LAYOUT_SPECS = [
    "gemm_sigmoid_residual",
    "gated_residual",
    "clamp_select",
    "linear_softmax",
    "linear_logsumexp",
    "row_pools",
]


def _args(name: str, device: str, data: st.DataObject) -> tuple[Any, list[Any], list[float]]:
    """A committed spec's operator and random arguments (tensors, floats) for it."""
    compiled, module = committed(name)
    kernel = compiled.kernel
    problem = data.draw(problems(device, kernel=kernel), label="problem")
    tensors, floats = data.draw(call_args(kernel, problem), label="arguments")
    note(f"strides: {[tuple(t.stride()) for t in tensors]}")
    values = [float(floats.get(f.name, f.default)) for f in kernel.floats]
    return module._OP, tensors, values


def _same_layout(t: torch.Tensor, seed: int) -> torch.Tensor:
    """New random values in a tensor of t's exact layout: shape, strides, dtype, device
    and storage offset (so the same address modulo 16)."""
    storage = torch.empty(t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype)
    fresh = storage.to(t.device).as_strided(t.shape, t.stride(), t.storage_offset())
    gen = torch.Generator().manual_seed(seed)
    fresh.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype))
    return fresh


_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same dtype, shape and bits (NaN payloads and signed zeros included)."""
    bits = _BITS[a.dtype]
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
    )


# -- the checks -------------------------------------------------------------------


def test_check_gemm_takes_x_of_any_leading_shape() -> None:
    w = torch.randn(6, 8)
    assert checks.check_gemm(torch.randn(8), w, True, True) == ((), 1, 6, 8)
    assert checks.check_gemm(torch.randn(2, 3, 8), w, True, True) == ((2, 3), 6, 6, 8)
    assert checks.check_gemm(torch.randn(4, 0, 8), w, True, True) == ((4, 0), 0, 6, 8)
    assert checks.check_gemm(torch.randn(5, 6), w, False, True) == ((5,), 5, 8, 6)
    with pytest.raises(ValueError, match=r"x must be \[\*, K\]"):
        checks.check_gemm(torch.tensor(1.0), w, True, True)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        checks.check_gemm(torch.randn(8), w[0], True, True)
    with pytest.raises(ValueError, match="K differs"):
        checks.check_gemm(torch.randn(2, 3, 7), w, True, True)
    with pytest.raises(ValueError, match="kgen kernels run on CUDA"):
        checks.check_gemm(torch.randn(2, 8), w, True, False)
    with pytest.raises(TypeError, match=r"weight must be a torch\.Tensor"):
        checks.check_gemm(torch.randn(2, 8), [1.0], True, True)


def test_operand_shapes_follow_the_leading_shape_of_x() -> None:
    lead = (2, 3)
    assert checks.operand_shape("tile", 1, lead, 10) == (2, 3, 10)
    assert checks.operand_shape("row", 1, lead, 10) == (2, 3)
    assert checks.operand_shape("col", 1, lead, 10) == (10,)
    assert checks.operand_shape("col", 2, lead, 10) == (5,)
    assert checks.operand_shape("scalar", 1, lead, 10) == ()
    assert checks.operand_shape("row", 1, (), 10) == ()


def test_check_float() -> None:
    assert checks.check_float("s", 3) == 3.0 and type(checks.check_float("s", 3)) is float
    for bad in (True, "2", torch.tensor(2.0), None):
        with pytest.raises(TypeError, match="s must be a Python float"):
            checks.check_float("s", bad)


# -- layouts and plans --------------------------------------------------------------


def test_layout_key_tells_layouts_apart() -> None:
    base = torch.randn(8, 17)
    key = launch.layout_key([base])
    assert launch.layout_key([torch.randn(8, 17)]) == key  # values do not count
    for other in (
        base.half(),  # dtype
        base.T.contiguous().T,  # strides
        torch.randn(9, 17),  # shape
        torch.randn(8 * 17 + 1)[1:].view(8, 17),  # address modulo 16
        torch.nn.Parameter(base),  # type
    ):
        assert launch.layout_key([other]) != key
    with pytest.raises(AttributeError):
        launch.layout_key([base.numpy()])


def _specialization(values: list[Any]) -> list[Any]:
    return [native_specialize_impl(BaseBackend, v, False, True, True) for v in values]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", LAYOUT_SPECS)
@given(data=st.data())
def test_a_kept_plan_computes_what_a_fresh_plan_computes(
    name: str, device: str, data: st.DataObject
) -> None:
    """Two calls with the same layout (`layout_key`) and other values: the second, run
    from the first's plan (the lean path: on the GPU, the compiled kernel launched
    through its launcher), gives the same bits as a fresh plan through
    `kernel[grid](...)`, with every kernel argument the same or specialized the same
    way; on the GPU the very same binary runs."""
    op, first, floats = _args(name, device, data)
    x = first[0]
    given_config = data.draw(st.none() | configs(x.shape[0], x.shape[1], x.shape[1], device))
    second = [_same_layout(t, seed) for seed, t in enumerate(first)]
    assert launch.layout_key(second) == launch.layout_key(first)
    values = [float(v) for v in floats]
    try:
        kept = op.plan(*first, *values, config=given_config)
    except ValueError as error:  # a row operation that cannot run at this N
        assert op.rows is not None, error
        return
    kept.run([*first, *values])  # through kernel[grid](...): compiles, keeps the binary
    reused = kept.run([*second, *values])  # on the GPU: through the launcher
    fresh = op.plan(*second, *values, config=given_config)
    expected = fresh.run([*second, *values])
    assert _equal(reused, expected)
    assert kept.views == fresh.views and kept.copies == fresh.copies
    assert len(kept.launches) == len(fresh.launches)
    for a, b in zip(kept.launches, fresh.launches, strict=True):
        assert a.grid == b.grid and a.options == b.options and a.slots == b.slots
        run_values = [*second, *[None] * launch.FLOATS, *values]
        assert _specialization(a.fill(run_values)) == _specialization(b.fill(run_values))
        for (i, x), y in zip(enumerate(a.args), b.args, strict=True):
            if i not in dict(a.slots):
                assert x == y or (x is None and y is None), a.jit.arg_names[i]
        if device == "cuda":
            assert a.compiled is b.compiled and a.compiled is not None
            assert kept.direct


@pytest.mark.parametrize("device", DEVICES)
def test_the_lean_path_keeps_one_plan_per_layout(device: str) -> None:
    _, module = committed("gemm_sigmoid_residual")
    op = module._OP
    op.forget()
    w, b = torch.randn(24, 16, device=device), torch.randn(24, device=device)
    x = torch.randn(5, 16, device=device)
    first = module.gemm_sigmoid_residual(x, w, b)
    assert len(op.plans) == 1
    again = module.gemm_sigmoid_residual(x.clone(), w, b, scaling_factor=2.0)
    assert len(op.plans) == 1 and torch.equal(first, again)
    module.gemm_sigmoid_residual(x.half(), w.half(), b)
    module.gemm_sigmoid_residual(x.T.contiguous().T, w, b)
    assert len(op.plans) == 3
    # an int float param, and a bad tensor after a good call: still checked
    assert torch.equal(module.gemm_sigmoid_residual(x, w, b, scaling_factor=2), first)
    with pytest.raises(ValueError, match=r"bias must have shape \[24\]"):
        module.gemm_sigmoid_residual(x, w, b[:5])
    with pytest.raises(TypeError, match="scaling_factor must be a Python float"):
        module.gemm_sigmoid_residual(x, w, b, scaling_factor="2")


# -- [*, K] inputs ------------------------------------------------------------------


@st.composite
def _leading(draw: st.DrawFn, M: int) -> tuple[int, ...]:
    """A leading shape of M rows: [], [M], [a, b] or [a, b, c] (b may be 0 when M is)."""
    if M == 1 and draw(st.booleans()):
        return ()
    factors = [d for d in range(1, M + 1) if M % d == 0]
    a = draw(st.sampled_from(factors))
    rest = M // a
    if draw(st.booleans()):
        return (M,)
    if draw(st.booleans()):
        return (a, rest)
    b = draw(st.sampled_from([d for d in range(1, rest + 1) if rest % d == 0]))
    return (a, b, rest // b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", LAYOUT_SPECS)
@given(data=st.data())
def test_inputs_of_any_leading_shape(name: str, device: str, data: st.DataObject) -> None:
    """x [*, K] (and [*] and [*, N] operands) computes what the flattened call computes,
    bit for bit, and returns the flattened result in the leading shape; a view, not a
    copy, where the strides allow, and correct where they do not."""
    op, args, floats = _args(name, device, data)
    x = args[0]
    M, _K = x.shape
    lead = data.draw(_leading(M), label="leading shape")
    permute = len(lead) >= 2 and data.draw(st.booleans(), label="permuted")

    def lift(t: torch.Tensor, kind: str) -> torch.Tensor:
        tail = tuple(t.shape[1:]) if kind == "tile" else ()
        if not permute:
            return t.reshape((*lead, *tail))
        # the same values in a layout no view flattens: the first two dims swapped
        swapped = t.reshape((*lead, *tail)).transpose(0, 1).contiguous().transpose(0, 1)
        return swapped

    lifted = [args[0]]
    lifted[0] = lift(args[0], "tile")
    lifted.append(args[1])  # the weight
    for (_, kind, _), t in zip(op.operands[2:], args[2:], strict=True):
        lifted.append(lift(t, kind) if kind in ("tile", "row") else t)
    flat = op(*args, *floats)
    out = op(*lifted, *floats)
    assert out.shape == (*lead, *flat.shape[1:])
    assert _equal(out.reshape(flat.shape), flat)
    plan = op.plans[launch.layout_key(lifted)]
    if not permute:
        assert plan.copies == ()
    named = {f[0]: v for f, v in zip(op.floats, floats, strict=True)}
    testing.assert_matches_reference(committed(name)[0].kernel, flat, *args, **named)


@pytest.mark.parametrize("device", DEVICES)
def test_a_vector_input_is_one_row(device: str) -> None:
    _, module = committed("gated_residual")
    model = module.ModelNew(8, 6).to(device)
    x, gate, residual = (
        torch.randn(8, device=device),
        torch.randn((), device=device),
        torch.randn(6, device=device),
    )
    with torch.no_grad():
        out = model(x, gate, residual)
        flat = model(x[None], gate[None], residual[None])
    assert out.shape == (6,) and torch.equal(out, flat[0])


# -- autocast -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gemm_sigmoid_residual", "gated_residual", "linear_softmax"])
@given(
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    given_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31),
)
def test_autocast_runs_the_gemm_in_its_dtype(
    name: str, device: str, dtype: torch.dtype, given_dtype: torch.dtype, seed: int
) -> None:
    """Under torch.autocast the GEMM and the output take the autocast dtype, as
    nn.Linear's do: the same bits as a call with x and weight cast by hand (the other
    operands keep their dtypes); outside autocast, and with autocast disabled, nothing
    is cast."""
    compiled, module = committed(name)
    kernel = compiled.kernel
    from kgen.tune import Shape, inputs

    args, floats = inputs(kernel, Shape(7, 40, 24), given_dtype, device=device, seed=seed)
    fn = getattr(module, kernel.name)
    with torch.autocast(device, dtype=dtype):
        out = fn(*args, **floats)
        again = fn(*args, **floats)  # the lean path: the plan kept, the casts again
        with torch.autocast(device, enabled=False):
            plain = fn(*args, **floats)
    by_hand = fn(args[0].to(dtype), args[1].to(dtype), *args[2:], **floats)
    expected_dtype = getattr(torch, kernel.output_dtype) if kernel.output_dtype else dtype
    assert out.dtype == expected_dtype and _equal(out, by_hand)
    assert again.dtype == expected_dtype and _equal(again, by_hand)
    assert plain.dtype == (
        getattr(torch, kernel.output_dtype) if kernel.output_dtype else given_dtype
    )
    assert _equal(plain, fn(*args, **floats))


# -- the operator: torch.compile, torch.export, opcheck --------------------------------


class _Block(torch.nn.Module):
    """A kgen module inside ordinary PyTorch code."""

    def __init__(self, module: Any, K: int, N: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(K)
        self.kgen = module.ModelNew(K, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kgen(self.norm(x)) * 0.5 + 1.0


@pytest.mark.parametrize("name", [*SEEDS, "linear_logsumexp"])
def test_compiled_model_has_no_graph_break_and_matches_eager(name: str) -> None:
    """torch.compile(fullgraph=True) of a model holding a kgen module traces it as one
    operator: no graph break, the same result as eager, at two batch shapes."""
    _, module = committed(name)
    torch.manual_seed(0)
    model = _Block(module, 24, 40)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for shape in ((5, 24), (2, 3, 24)):
            x = torch.randn(shape)
            assert _equal(compiled(x), model(x))
    explained = torch._dynamo.explain(model)(torch.randn(4, 24))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    graph = str(explained.graphs[0].graph)
    assert f"kgen.{module._OP.operator._opname}" in graph or "kgen" in graph


def test_compiled_model_under_autocast_and_grad_mode() -> None:
    _, module = committed("gemm_sigmoid_residual")
    torch.manual_seed(1)
    model = _Block(module, 16, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 16)
    out = compiled(x)  # parameters require grad: the training operator
    assert out.requires_grad and out.grad_fn is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = compiled(x)
        eager = model(x)
    assert half.dtype == torch.bfloat16 and _equal(half, eager)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("name", "K", "N"),
    [(n, 64, 320) for n in [*SEEDS, "linear_softmax"]] + [("gemm_sigmoid_residual", 4096, 512)],
)
def test_inductor_cuda_graphs_and_export_on_the_gpu(name: str, K: int, N: int) -> None:
    """On the GPU: Inductor (default mode) and CUDA graphs (reduce-overhead) run a model
    holding a kgen module with no graph break; the kgen module alone, compiled, gives
    its eager bits; torch.export runs it too. K = 4096 splits K (split-K's counters
    must not be left in the CUDA graphs' memory pool)."""
    _, module = committed(name)
    torch.manual_seed(0)
    model = _Block(module, K, N).cuda().half()
    x = torch.randn(2, 8, K, device="cuda", dtype=torch.half)
    with torch.no_grad():
        want = model(x)
        alone = model.kgen(x)
        for mode in (None, "reduce-overhead"):
            compiled = torch.compile(model, mode=mode, fullgraph=True)
            for _ in range(3):  # reduce-overhead records its CUDA graph on a later call
                out = compiled(x)
            # Inductor may round the LayerNorm in another order: the kgen input differs
            torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)
            kgen_only = torch.compile(model.kgen, mode=mode, fullgraph=True)
            for _ in range(3):
                got = kgen_only(x)
            assert _equal(got, alone)
        exported = torch.export.export(model, (x,))
        assert _equal(exported.module()(x), want)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0


def test_export() -> None:
    _, module = committed("gated_residual")
    torch.manual_seed(2)
    model = module.ModelNew(8, 6)
    args = (torch.randn(2, 3, 8), torch.randn(2, 3), torch.randn(2, 3, 6))
    exported = torch.export.export(model, args)
    assert "torch.ops.kgen." in exported.graph_module.code
    with torch.no_grad():
        assert _equal(exported.module()(*args), model(*args))


@pytest.mark.parametrize("name", [p.stem for p in SPECS])
def test_opcheck(name: str) -> None:
    """torch.library.opcheck on every spec's operator: schema, fake implementation
    (shapes, strides, dtypes), and the operator under AOT dispatch."""
    compiled, module = committed(name)
    from kgen.tune import Shape, inputs

    kernel = compiled.kernel
    N = 256 if any(i.op == "groupnorm" for i in kernel.row_ops) else 12
    args, floats = inputs(kernel, Shape(5, N, 8), torch.float32, device="cpu", seed=3)
    values = [floats[f.name] for f in kernel.floats]
    lifted = [args[0].reshape(5, 1, 8), *args[1:]]
    for call in ((*args, *values), (*lifted, *values) if not kernel.tensors else None):
        if call is None:
            continue
        result = torch.library.opcheck(module._OP.operator, call)
        assert set(result.values()) == {"SUCCESS"}, result


def test_output_requires_grad_only_when_an_argument_does(tmp_path) -> None:
    """Gradients are tests/test_grad.py's subject; here only the call's contract: the
    result has a grad_fn exactly when an argument requires grad, and no warning."""
    _, module = build_and_import("epilogue: bias; relu\n", tmp_path, "graded.fuse")
    model = module.ModelNew(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # kgen warns no more
        out = model(torch.randn(3, 8))
        with torch.no_grad():
            plain = model(torch.randn(5, 2, 8))
    assert out.requires_grad and out.grad_fn is not None
    assert not plain.requires_grad


def test_modules_of_one_name_get_operators_of_their_own(tmp_path) -> None:
    _, relu = build_and_import("name: twin\nepilogue: bias; relu\n", tmp_path)
    _, neg = build_and_import("name: twin\nepilogue: bias; neg\n", tmp_path)
    assert relu._OP.operator is not neg._OP.operator
    x, w, b = torch.randn(3, 8), torch.randn(4, 8), torch.randn(4)
    z = torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(relu._OP.operator(x, w, b), z.relu())
    torch.testing.assert_close(neg._OP.operator(x, w, b), -z)


def test_kgen_check_reads_the_runtime_declaration() -> None:
    """`kgen check` holds a generated module's kernel to the outputs its runtime
    declaration gives it: a second store of the output is a finding."""
    compiled, _ = committed("gemm_sigmoid_residual")
    source = compiled.source
    assert check_source("m.py", source) == []
    store = "tl.store(out_ptrs, "
    twice = source.replace(store, f"{store}acc, mask=mask_mn)\n            {store}", 1)
    findings = check_source("m.py", twice)
    assert any(f.rule == "store-count" for f in findings), findings


def test_device_facts_under_the_interpreter() -> None:
    assert devices.device(torch.device("cpu")) == devices.Device("interpreter", 3, True)


def test_an_empty_problem_launches_nothing() -> None:
    _, module = committed("linear_softmax")
    x, w, b = torch.randn(0, 3, 8), torch.randn(5, 8), torch.randn(5)
    plan = module._OP.plan(x, w, b)
    assert isinstance(plan, Plan) and plan.launches == ()
    for _ in range(2):  # the second call runs the kept plan: on the CPU, not "direct"
        assert module._OP(x, w, b).shape == (0, 3, 5)
    assert not plan.run([x, w, b]).numel() and not plan.direct


def test_a_kept_plan_does_not_keep_its_first_calls_tensors_alive() -> None:
    """Plans outlive the call that made them: their tensor descriptors' templates (x's,
    the weight's, a training forward's stores) hold a layout, not the tensors, so that
    a training step's activations are freed after it."""
    _, module = committed("linear_gelu")
    op = module._OP
    w, b = torch.randn(48, 32), torch.randn(48)
    for save in (False, True):
        x = torch.randn(40, 32)
        plan = op.plan(x, w, b, config=(32, 32, 16, 2, 4, 2, "persistent", 1), save=save)
        assert plan.descs and (plan.stores is not None) == save
        run = plan.run_saving if save else plan.run
        run([x, w, b])
        alive = weakref.ref(x)
        del x
        gc.collect()
        assert alive() is None
        run([torch.randn(40, 32), w, b])  # the plan still runs
