"""Gradients: the derivative pass (kgen.derive) and the generated backward, against
torch.autograd of the float64 oracle (kgen.reference) and finite differences.

Three levels, each independent of the next:
1. the backward IR evaluated with the ops' references, against autograd of the
   forward reference, for every spec and random chains (no Triton: fast, float64);
2. the backward IR, as an autograd.Function, against finite differences
   (`torch.autograd.gradcheck` in float64);
3. the generated modules' gradients (the saved accumulator, the backward kernel, the
   GEMMs) against the oracle, within kgen.testing's gradient bound, with `[*, K]`
   inputs, under autocast, torch.compile(fullgraph=True), no_grad and checkpointing.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from helpers import DEVICES, SPECS, build_and_import, committed, compile_for_hopper
from hypothesis import given, note, settings
from hypothesis import strategies as st
from strategies import random_specs

from kgen import reference, testing
from kgen.build import compile_spec
from kgen.derive import ACC, COUNT, DOUT, NotDifferentiable, derive
from kgen.ir import Kernel, Kind, Role
from kgen.runtime import devices
from kgen.tune import Shape, inputs

NAMES = [p.stem for p in SPECS]
NOT_DIFFERENTIABLE: dict[str, str] = {}  # every committed spec has a gradient
DIFFERENTIABLE = [n for n in NAMES if n not in NOT_DIFFERENTIABLE]
# what derive still refuses (NotDifferentiable.op), for specs it is given at random
_REFUSED = (
    " with a learned ",
    "after one of other groups",
    " after a groupnorm",
    "groupnorm after a ",
)


def _columns(kernel: Kernel, N: int) -> int:
    """A column count the kernel's row operations accept (groupnorm's groups; at
    least one column left after the pools, for a reduction after them)."""
    groups = max((i.size for i in kernel.row_ops if i.op == "groupnorm"), default=1)
    windows = math.prod(i.size for i in kernel.row_ops if i.op in ("avgpool", "maxpool"))
    return max(N // groups, 1, -(-windows // groups)) * groups


def _operands(kernel: Kernel, M: int, N: int, generator: torch.Generator) -> dict:
    values: dict = {}
    for o in kernel.operands:
        if o.role is Role.FLOAT:
            values[o.name] = float(o.default) if o.default is not None else 0.75
            continue
        shape = {Kind.TILE: (M, N), Kind.COL: (N // o.pool,), Kind.ROW: (M,), Kind.SCALAR: ()}
        values[o.name] = torch.randn(shape[o.kind], dtype=torch.float64, generator=generator)
    return values


def _backward_ir(kernel: Kernel, acc, operands: dict, dout) -> list[torch.Tensor]:
    """The gradients (acc's, then each tensor operand's) by evaluating the backward IR
    with the ops' references, summed as the backward kernel sums them."""
    backward = derive(kernel)
    M, N = acc.shape
    values = dict(operands)
    values[DOUT] = dout.reshape(M, -1)
    values[COUNT] = float(N)
    traced = reference.trace(backward.kernel, acc, values)
    grads = []
    for name, index in backward.grads:
        kind = Kind.TILE if name == ACC else kernel.operand(name).kind
        like = acc if name == ACC else operands[name]
        if index is None:
            grads.append(torch.zeros_like(like))
            continue
        g = torch.as_tensor(traced[index], dtype=acc.dtype)
        g = g.reshape(1, 1) if g.dim() < 2 else g
        if g.shape[0] > 1 and kind in (Kind.COL, Kind.SCALAR):
            g = g.sum(0, keepdim=True)
        if g.shape[1] > 1 and kind in (Kind.ROW, Kind.SCALAR):
            g = g.sum(1, keepdim=True)
        width = like.shape[-1] if kind in (Kind.TILE, Kind.COL) and like.dim() else N
        full = {Kind.TILE: (M, width), Kind.COL: (1, width), Kind.ROW: (M, 1), Kind.SCALAR: (1, 1)}
        grads.append(g.expand(full[kind]).reshape(like.shape))
    return grads


def _check_ir(kernel: Kernel, M: int, N: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    acc = torch.randn(M, N, dtype=torch.float64, generator=generator)
    operands = _operands(kernel, M, N, generator)
    tensors = [o.name for o in kernel.operands if o.role.is_tensor]
    leaves = [acc.clone().requires_grad_()] + [
        operands[n].clone().requires_grad_() for n in tensors
    ]
    with_grad = dict(operands, **dict(zip(tensors, leaves[1:], strict=True)))
    out = reference.epilogue(kernel, leaves[0], with_grad)
    dout = torch.randn(out.shape, dtype=torch.float64, generator=generator)
    exact = torch.autograd.grad(out, leaves, dout, allow_unused=True)
    got = _backward_ir(kernel, acc, operands, dout)
    for name, g, e in zip([ACC, *tensors], got, exact, strict=True):
        e = torch.zeros_like(g) if e is None else e
        finite = torch.isfinite(e) & torch.isfinite(out).all()
        # float64 throughout, but the rules' constants are fp32 values, as every
        # constant of the IR is (selu's 1.0507009873554805 is 1.0507010221481323): a
        # few fp32 units (2^-24) of the largest gradient apart; where autograd has no
        # finite derivative (sqrt at 0) there is nothing to compare; and float64's own
        # rounding where terms cancel (s / s has the gradient 1 / s - s / s^2 = 0)
        scale = float(torch.where(finite, e.abs(), 0.0).max()) if e.numel() else 0.0
        error = torch.where(finite, (g - e).abs(), 0.0)
        assert not bool((finite & ~torch.isfinite(g)).any()), (name, g, e)
        floor = 1e-12 * float(dout.abs().max())
        assert float(error.max()) <= 16 * 2.0**-24 * scale + floor, (
            name,
            float(error.max()),
            scale,
            g,
            e,
        )


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_the_backward_ir_of_every_spec_matches_autograd(name: str) -> None:
    kernel = committed(name)[0].kernel
    for seed, (M, N) in enumerate([(5, 12), (1, 7), (3, 1)]):
        _check_ir(kernel, M, _columns(kernel, N), seed)


@given(spec=random_specs(), seed=st.integers(0, 2**16), M=st.integers(1, 6), N=st.integers(1, 9))
def test_the_backward_ir_of_random_chains_matches_autograd(
    spec: str, seed: int, M: int, N: int
) -> None:
    note(spec)
    kernel = compile_spec(spec, "chain.fuse").kernel
    try:
        derive(kernel)
    except NotDifferentiable as error:
        # a learned tensor where a rule takes a constant (a slope), a second
        # groupnorm of other groups or a groupnorm and a pool (one kind of slots per
        # backward kernel)
        assert any(r in error.op for r in _REFUSED)
        return
    _check_ir(kernel, M, _columns(kernel, N), seed)


@pytest.mark.parametrize(
    "spec",
    [
        "input r: [M]\nepilogue: mul(r); row_sum; mul(r)\n",
        "param s: scalar = 0.5\nepilogue: mul(s); row_sum; mul(s)\n",
        "input r: [M]\nparam s: scalar = 0.5\nepilogue: mul(s); add(r); row_max; mul(r); mul(s)\n",
    ],
)
def test_an_operand_before_and_after_a_reduction(spec: str) -> None:
    """A column-less operand reached both through the columns (before the reduction)
    and without them (after): the kernel sums the total over the columns, so the
    second part must not be counted N times."""
    kernel = compile_spec(spec, "twice.fuse").kernel
    for seed, (M, N) in enumerate([(5, 24), (1, 7), (3, 1)]):
        _check_ir(kernel, M, N, seed)


def test_a_learned_scalar_where_a_rule_takes_a_constant_is_named() -> None:
    kernel = compile_spec("param a: scalar = 0.2\nepilogue: leaky_relu(a)\n", "k.fuse").kernel
    with pytest.raises(NotDifferentiable) as caught:
        derive(kernel)
    assert caught.value.op == "leaky_relu with a learned slope"
    assert (caught.value.span.line, caught.value.span.column) == (2, 11)


def test_the_backward_operator_agrees_with_its_fake(tmp_path) -> None:
    """opcheck of NAME_backward: shapes, strides and dtypes of the real gradients are
    the fake's, with gradients left out (`needs`), an operand the output does not
    depend on, and a transposed [M, N] operand."""
    spec = "input f: [M, N]\nparam v: vector[N]\nepilogue: bias; acc = where(f > 0, acc, 0.5 * acc); mul(v)\n"
    _, module = build_and_import(spec, tmp_path, "fake.fuse")
    op = module._OP
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, generator=generator)
    weight, bias = torch.randn(5, 8, generator=generator), torch.randn(5, generator=generator)
    f = torch.randn(5, 6, generator=generator).T.reshape(2, 3, 5)
    v = torch.randn(5, generator=generator)
    args = [x, weight, bias, f, v]
    out, saved = op.train_operator(*args)
    dout = torch.randn(out.shape, generator=generator)
    for needs in ([True] * 5, [False, True, False, True, True], [True, False, True, False, False]):
        result = torch.library.opcheck(op.backward_operator, (dout, saved, *args, needs))
        assert set(result.values()) == {"SUCCESS"}, result
        grads = op.backward_operator(dout, saved, *args, needs)
        for g, a, need in zip(grads, args, needs, strict=True):
            assert g.dtype == a.dtype and g.is_contiguous()
            assert g.shape == (a.shape if need else (0,))


def test_double_backward_is_refused() -> None:
    _, module = committed("linear_gelu")
    x = torch.randn(3, 8, requires_grad=True)
    model = module.ModelNew(8, 4)
    (gx,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(gx.square().sum(), model.weight)


@pytest.mark.parametrize(
    ("spec", "op", "column"),
    [
        # one kind of slots per backward kernel: a groupnorm's or the pools' windows
        ("epilogue: bias; groupnorm(2); maxpool(2)\n", "maxpool after a groupnorm", 31),
        # (groupnorm(1) too: after a pool its weight has N // 2 columns)
        ("epilogue: bias; maxpool(2); groupnorm(1)\n", "groupnorm after a maxpool", 29),
    ],
)
def test_what_derive_still_refuses_is_named(spec: str, op: str, column: int) -> None:
    with pytest.raises(NotDifferentiable) as caught:
        derive(compile_spec(spec, "refused.fuse").kernel)
    assert (caught.value.op, caught.value.span.column) == (op, column)


class _Derived(torch.autograd.Function):
    """The forward reference, with the backward IR as its backward: for gradcheck."""

    @staticmethod
    def forward(ctx, kernel, floats, acc, *tensors):  # type: ignore[no-untyped-def]
        ctx.kernel, ctx.floats = kernel, floats
        ctx.save_for_backward(acc, *tensors)
        names = [o.name for o in kernel.operands if o.role.is_tensor]
        return reference.epilogue(
            kernel, acc, dict(floats, **dict(zip(names, tensors, strict=True)))
        )

    @staticmethod
    def backward(ctx, dout):  # type: ignore[no-untyped-def]
        acc, *tensors = ctx.saved_tensors
        names = [o.name for o in ctx.kernel.operands if o.role.is_tensor]
        operands = dict(ctx.floats, **dict(zip(names, tensors, strict=True)))
        return None, None, *_backward_ir(ctx.kernel, acc, operands, dout)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_the_backward_ir_passes_gradcheck(name: str) -> None:
    """The derivative rules against finite differences, in float64 (max-type row ops
    are not differentiable at ties, which random inputs do not hit)."""
    kernel = committed(name)[0].kernel
    generator = torch.Generator().manual_seed(7)
    M, N = 3, _columns(kernel, 5)
    acc = torch.randn(M, N, dtype=torch.float64, generator=generator).requires_grad_()
    operands = _operands(kernel, M, N, generator)
    floats = {k: v for k, v in operands.items() if not isinstance(v, torch.Tensor)}
    tensors = [operands[o.name].requires_grad_() for o in kernel.operands if o.role.is_tensor]
    assert torch.autograd.gradcheck(
        lambda a, *t: _Derived.apply(kernel, floats, a, *t), (acc, *tensors), atol=1e-6
    )


# ---------------------------------------------------------------------------
# The generated modules


def _grads(module, kernel: Kernel, args, floats, dout=None):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out = getattr(module, kernel.name)(*leaves, **floats)
    if dout is None:  # fresh values, the same for a given shape (Hypothesis replays)
        generator = torch.Generator().manual_seed(out.numel())
        dout = torch.randn(out.shape, generator=generator).to(out)
    grads = torch.autograd.grad(out, leaves, dout, allow_unused=True)
    return (
        out,
        dout,
        [torch.zeros_like(a) if g is None else g for g, a in zip(grads, leaves, strict=True)],
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", DIFFERENTIABLE)
@given(data=st.data())
@settings(max_examples=6)
def test_module_gradients_match_the_oracle(name: str, device: str, data: st.DataObject) -> None:
    compiled, module = committed(name)
    kernel = compiled.kernel
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    M = data.draw(st.integers(1, 40), label="M")
    N = _columns(kernel, data.draw(st.integers(1, 80), label="N"))
    K = data.draw(st.integers(1, 48), label="K")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    args, floats = inputs(kernel, Shape(M, N, K), dtype, device=device, seed=seed)
    lead = data.draw(st.sampled_from([(M,), (1, M)]), label="leading shape")
    if len(lead) > 1 and not kernel.tensors:
        args = [args[0].reshape(*lead, K), *args[1:]]
    _, dout, grads = _grads(module, kernel, args, floats)
    testing.assert_gradients_match(kernel, grads, args, dout, **floats)


def test_gradients_reach_leading_dimensions_and_operands(tmp_path) -> None:
    """[*, K] inputs with [*, N] and [*] operands: every gradient has its tensor's
    shape and matches the oracle."""
    spec = "input r: [M, N]\ninput s: [M]\nparam v: vector[N]\nepilogue: bias; mul(s); add(v); residual(r); silu\n"
    compiled, module = build_and_import(spec, tmp_path, "lead.fuse")
    kernel = compiled.kernel
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, generator=generator)
    weight, bias = torch.randn(5, 8, generator=generator), torch.randn(5, generator=generator)
    r, s = torch.randn(2, 3, 5, generator=generator), torch.randn(2, 3, generator=generator)
    v = torch.randn(5, generator=generator)
    operands = {"r": r, "s": s, "v": v}
    args = [x, weight, bias, *(operands[t.name] for t in kernel.tensors)]
    _, dout, grads = _grads(module, kernel, args, {})
    assert [g.shape for g in grads] == [a.shape for a in args]
    testing.assert_gradients_match(kernel, grads, args, dout)


def test_module_training_matches_eager_pytorch_and_compiles_without_graph_breaks() -> None:
    """ModelNew in a training step: the parameters' gradients are PyTorch's (the same
    nn.Linear initialisation), eagerly and under torch.compile(fullgraph=True)."""
    _, module = committed("gemm_sigmoid_residual")
    torch.manual_seed(0)
    model = module.ModelNew(16, 24, 2.0)
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24)
    x = torch.randn(2, 5, 16)

    def step(m, f):  # type: ignore[no-untyped-def]
        for p in m.parameters():
            p.grad = None
        y = f(x)
        y.square().mean().backward()
        return [p.grad.clone() for p in m.parameters()]

    def plain(t):  # type: ignore[no-untyped-def]
        z = linear(t)
        return z + 2.0 * torch.sigmoid(z)

    want = step(linear, plain)
    got = step(model, model)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for g, w in zip(step(model, compiled), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    explained = torch._dynamo.explain(lambda t: model(t).sum())(x)
    assert explained.graph_break_count == 0


def test_no_grad_saves_nothing_and_checkpointing_works() -> None:
    _, module = committed("linear_gelu")
    torch.manual_seed(1)
    model = module.ModelNew(8, 12)
    x = torch.randn(4, 8, requires_grad=True)
    module._OP.train_plans.clear()
    with torch.no_grad():
        out = model(x)
    assert not out.requires_grad and out.grad_fn is None
    assert not module._OP.train_plans  # the saving kernel was not planned: nothing saved
    y = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False)
    y.sum().backward()
    want = torch.autograd.grad(
        torch.nn.functional.gelu(torch.nn.functional.linear(x, model.weight, model.bias)).sum(), x
    )[0]
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-6)


def test_a_spec_without_a_rule_runs_forward_and_names_the_op_at_backward(tmp_path) -> None:
    spec = "epilogue: bias; groupnorm(2); maxpool(2)\n"
    _, module = build_and_import(spec, tmp_path, "refused.fuse")
    model = module.ModelNew(8, 12)
    out = model(torch.randn(3, 8))
    assert out.requires_grad
    with pytest.raises(NotImplementedError, match=r"maxpool after a groupnorm \("):
        out.sum().backward()


def test_under_autocast_gradients_reach_fp32_parameters() -> None:
    _, module = committed("linear_gelu")
    torch.manual_seed(2)
    model = module.ModelNew(16, 8)
    x = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert model.weight.grad is not None and model.weight.grad.dtype == torch.float32
    want = torch.autograd.grad(
        torch.nn.functional.gelu(torch.nn.functional.linear(x, model.weight, model.bias)).sum(),
        model.weight,
    )[0]
    torch.testing.assert_close(model.weight.grad, want, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("groups", "width"), [(3, 5), (4, 4), (2, 1), (1, 12), (2, 100), (37, 3)])
def test_groupnorm_gradients_for_any_group_width(
    groups: int, width: int, device: str, tmp_path
) -> None:
    """groupnorm's backward reduces each group of columns in registers, each group in
    a power-of-two slot (kgen/lower/backward.py): widths of a power of two and not, one
    column per group (the bias alone reaches the output), one group (a layernorm with
    an affine); a softmax after it, and rows over many programs."""
    spec = f"epilogue: bias; groupnorm({groups}); silu; softmax\n"
    compiled, module = build_and_import(spec, tmp_path, "gn.fuse")
    kernel = compiled.kernel
    for dtype in (torch.float32, torch.bfloat16):
        args, floats = inputs(kernel, Shape(70, groups * width, 9), dtype, device=device, seed=1)
        _, dout, grads = _grads(module, kernel, args, floats)
        testing.assert_gradients_match(kernel, grads, args, dout, **floats)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("epilogue", "N"),
    [
        ("maxpool(2); avgpool(3); row_min(keepdim=false); sigmoid", 47),  # remainders
        ("avgpool(3); row_mean(keepdim=false)", 50),  # the mean over N // 3 columns
        ("avgpool(1); softmax", 20),  # a window of one column: the identity
        ("maxpool(1); sigmoid", 20),
        # a learned scalar on both sides of a pool: its gradient summed per level
        ("add(s); maxpool(2); mul(s)", 13),
        # no gradient through the pool, dout after it
        ("maxpool(2); acc = where(acc > 0, 1.0, 2.0) + s", 12),
        ("relu; maxpool(4); gelu", 36),  # ties: relu's zeros, the first one takes it
        ("avgpool(3); softmax", 20),
        ("maxpool(3); mul(s); maxpool(2); log_softmax", 31),  # a learned scalar after them
        ("avgpool(5); row_sum(keepdim=false)", 12),  # a gradient without columns
        ("avgpool(2)", 9),  # nothing recomputed: the pool's level from its unpool
        # a learned scalar's gradient without columns, counted over N // 2 columns
        ("maxpool(2); add(s); row_sum(keepdim=false)", 13),
    ],
)
def test_pool_gradients(epilogue: str, N: int, device: str, tmp_path) -> None:
    """Pools' derivatives: a window's gradient to its first maximum (maxpool, as
    torch's max_pool1d) or spread evenly (avgpool), none to the remainder columns no
    window covers; pooled windows in nested power-of-two slots of register columns
    (kgen/lower/backward.py), windows of 2 to 5, rows over many programs."""
    spec = f"param s: scalar = 0.7\nepilogue: bias; {epilogue}\n"
    compiled, module = build_and_import(spec, tmp_path, "pools.fuse")
    kernel = compiled.kernel
    for dtype in (torch.float32, torch.bfloat16):
        args, floats = inputs(kernel, Shape(70, N, 9), dtype, device=device, seed=3)
        _, dout, grads = _grads(module, kernel, args, floats)
        testing.assert_gradients_match(kernel, grads, args, dout, **floats)


def _launches(module, kernel: Kernel, N: int, M: int = 70) -> list[dict]:
    """The launches a call at M x N x 9 (on the CPU) planned: an inference call's, a
    training call's and, where the spec has a backward, its backward's; pointers as
    fp32 tensors, float params 1.0."""
    args, floats = inputs(kernel, Shape(M, N, 9), torch.float32, device="cpu", seed=1)
    op = module._OP
    with torch.no_grad():
        getattr(module, kernel.name)(*args, **floats)
    runs = [launch for plan in op.plans.values() for launch in plan.launches]
    if op.backward is not None:
        tensors = [a.detach().requires_grad_(a.is_floating_point()) for a in args]
        out = getattr(module, kernel.name)(*tensors, **floats)
        out.backward(torch.ones_like(out))
        runs += [launch for plan in op.train_plans.values() for launch in plan.launches]
        runs += [plan.launch for plan in op.backward_plans.values() if plan.launch is not None]
    floats_named = {name for name, _ in op.floats}
    launches = []
    for launch in runs:
        values = launch.arguments()
        for name, value in values.items():
            if value is None and name.endswith("_ptr"):
                values[name] = torch.float32
            elif value is None and name in floats_named:
                values[name] = 1.0
        launches.append({"kernel": launch.jit.__name__, "args": values, "options": launch.options})
    assert launches
    return launches


@pytest.mark.parametrize("N", [48, 300, 2000])
def test_pool_kernels_compile_for_hopper(N: int, tmp_path) -> None:
    """specs/row_pools.fuse's kernels (windows of 2, then of 3: gathers forward, nested
    slots backward) at the tiles the runtime picks compile for sm90 on this CPU
    (tests/helpers.py), the backward included."""
    compiled, module = committed("row_pools")
    launches = _launches(module, compiled.kernel, N)
    assert any(launch["kernel"].endswith("_backward") for launch in launches)
    compile_for_hopper(module, launches, tmp_path)


@pytest.mark.parametrize("N", [31, 1000])
def test_pool_backward_with_a_whole_row_op_compiles_for_hopper(N: int, tmp_path) -> None:
    """A whole-row op over a pooled value (its reductions over one register column of
    each window) and a learned scalar's gradient summed at the pooled level, for sm90."""
    spec = "param s: scalar = 0.7\nepilogue: bias; maxpool(3); mul(s); maxpool(2); log_softmax\n"
    compiled, module = build_and_import(spec, tmp_path, "pools.fuse")
    launches = _launches(module, compiled.kernel, N)
    assert any(launch["kernel"].endswith("_backward") for launch in launches)
    compile_for_hopper(module, launches, tmp_path)


@pytest.mark.parametrize("norm", ["layernorm", "groupnorm(1)", "groupnorm(3)"])
def test_two_pass_norm_kernels_compile_for_hopper(norm: str, tmp_path) -> None:
    """A norm over more columns than a tile holds runs in two passes, the first storing
    each value divided by its tile's spread, the finishing kernel multiplying it back
    (kgen/lower/rows.py): every kernel of the spec, backward included, for sm90."""
    compiled, module = build_and_import(f"epilogue: bias; exp; {norm}\n", tmp_path, "ln.fuse")
    launches = _launches(module, compiled.kernel, 771)
    assert any(launch["kernel"].endswith("_finish") for launch in launches)
    compile_for_hopper(module, launches, tmp_path)


@pytest.mark.parametrize(("groups", "width"), [(1, 12), (2, 100), (37, 3), (342, 12)])
def test_groupnorm_kernels_compile_for_hopper(groups: int, width: int, tmp_path) -> None:
    """The forward and backward kernels of a groupnorm, with the tiles and constexprs
    the runtime picks for these rows (the plans of an inference, a training and a
    backward call), compile for sm90 down to a cubin on this CPU (tests/helpers.py).
    Reducing groups through tl.gather, Triton 3.6 asserted in
    TritonGPUOptimizeThreadLocality on tiles of few rows or few groups: the backward at
    1 and 2 groups of 12 columns and 342 of 12, the forward at 2 groups of 100 in 16
    rows."""
    compiled, module = build_and_import(
        f"epilogue: bias; groupnorm({groups}); silu; softmax\n", tmp_path, "gn.fuse"
    )
    launches = _launches(module, compiled.kernel, groups * width)
    assert any(launch["kernel"].endswith("_backward") for launch in launches)
    compile_for_hopper(module, launches, tmp_path)


def test_two_groupnorms_of_other_groups_have_no_gradient_yet() -> None:
    """The backward kernel lays a row out in slots of one group width: a second
    groupnorm with other groups is refused with its place in the spec, not run wrong."""
    kernel = compile_spec("epilogue: bias; groupnorm(2); silu; groupnorm(4)\n", "g.fuse").kernel
    with pytest.raises(NotDifferentiable) as caught:
        derive(kernel)
    assert caught.value.op == "groupnorm after one of other groups"
    assert caught.value.span.column == 37  # the second groupnorm
    same = compile_spec("epilogue: bias; groupnorm(4); silu; groupnorm(4)\n", "g.fuse").kernel
    derive(same)
    third = "epilogue: bias; groupnorm(2); silu; groupnorm(4); silu; groupnorm(4)\n"
    with pytest.raises(NotDifferentiable) as caught:
        derive(compile_spec(third, "g.fuse").kernel)
    assert caught.value.span.column == 37  # the first of other groups


@pytest.mark.parametrize("shape", [(3, 0), (0, 8)])
def test_empty_problems_have_zero_gradients(shape: tuple[int, int], tmp_path) -> None:
    """No rows or no columns: the backward launches nothing and every gradient is an
    empty or zero tensor of its input's shape (groupnorm's tiling included)."""
    M, N = shape
    for spec in ("epilogue: bias; groupnorm(4); silu\n", "epilogue: bias; gelu\n"):
        compiled, module = build_and_import(spec, tmp_path, "e.fuse")
        kernel = compiled.kernel
        args, floats = inputs(kernel, Shape(M, N, 6), torch.float32, device="cpu", seed=2)
        tensors = [a.detach().requires_grad_(a.is_floating_point()) for a in args]
        out = getattr(module, kernel.name)(*tensors, **floats)
        grads = torch.autograd.grad(out, tensors, torch.ones_like(out), allow_unused=True)
        for t, g in zip(tensors, grads, strict=True):
            assert g is not None and g.shape == t.shape and not g.abs().sum()


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
def test_eager_training_skips_the_dispatcher_with_the_same_result(device: str) -> None:
    """In eager code a training call is an autograd.Function around the same forward
    and backward as the `_train` operator's registered autograd (no dispatcher); under
    a function mode (as under torch.compile) the operator runs. Same bytes out, same
    gradients."""
    _, module = committed("linear_gelu")
    torch.manual_seed(3)
    model = module.ModelNew(24, 40).to(device)
    x = torch.randn(2, 5, 24, device=device, requires_grad=True)
    dout = torch.randn(2, 5, 40, device=device)
    results = []
    for mode in (None, _PassThrough()):
        model.zero_grad(set_to_none=True)
        x.grad = None
        with mode if mode is not None else contextlib.nullcontext():
            out = model(x)
        out.backward(dout)
        results.append(
            (type(out.grad_fn).__name__, out, x.grad, model.weight.grad, model.bias.grad)
        )
    (lean, *first), (general, *second) = results
    assert lean == "_TrainBackward" and lean != general
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gemm_sigmoid_residual", "linear_groupnorm_swish"])
def test_training_launches_through_the_launcher_match_kernel_grid(name: str, device: str) -> None:
    """A training plan's and a backward's first call with a layout launch through
    `kernel[grid](...)`; on the GPU later ones go through Triton's launcher
    (Plan.run_saving, BackwardPlan.run): the same output, saved accumulator and
    gradients, bit for bit, for an aligned and an offset dout."""
    compiled, module = committed(name)
    kernel = compiled.kernel
    args, floats = inputs(kernel, Shape(48, 512, 64), torch.float16, device=device, seed=5)
    op = module._OP
    op.train_plans.clear()
    op.backward_plans.clear()
    trained = [op.train(*args, *floats.values()) for _ in range(3)]
    for out_saved in trained[1:]:
        for a, b in zip(trained[0], out_saved, strict=True):
            assert torch.equal(a, b)
    assert trained[0][1].numel()  # both specs save the accumulator
    tensors = [a.detach().requires_grad_(a.is_floating_point()) for a in args]
    out = getattr(module, kernel.name)(*tensors, **floats)
    assert torch.equal(out, trained[0][0])
    dout = torch.randn(out.numel() + 1, device=device, dtype=out.dtype)
    for g in (dout[:-1].view(out.shape), dout[1:].view(out.shape)):  # offset: 2 bytes
        runs = [torch.autograd.grad(out, tensors, g, retain_graph=True) for _ in range(3)]
        for grads in runs[1:]:
            for a, b in zip(runs[0], grads, strict=True):
                assert torch.equal(a, b)
    assert len(op.backward_plans) == 2  # the offset dout is a layout of its own
    if device == "cuda":
        assert all(plan.direct for plan in op.train_plans.values())
        assert all(plan.launch.direct is not None for plan in op.backward_plans.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["linear_gelu", "gated_residual"])
@given(data=st.data())
@settings(max_examples=4, deadline=None)
def test_training_stores_through_descriptors_match_pointer_stores(
    name: str, device: str, data: st.DataObject
) -> None:
    """A training forward in the persistent loop stores its output and the saved
    accumulator through tensor descriptors (TMA_STORE) where their rows are 16-byte
    aligned: the same bytes as the "tma" loop's pointer stores and as an inference
    call, at edges that leave partial tiles (the descriptors clip them); launched
    three times, so that on the GPU the later ones go through Triton's launcher."""
    compiled, module = committed(name)
    kernel = compiled.kernel
    op = module._OP
    dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    if device == "cuda":
        M, N, K = data.draw(st.sampled_from([(300, 520, 64), (129, 264, 200), (64, 1000, 48)]))
        # (fp32: half the elements in a stage's shared memory)
        wide = [(128, 256, 64)] if dtype != torch.float32 else [(128, 128, 32)]
        blocks = data.draw(st.sampled_from([*wide, (64, 128, 32)]))
        config = (*blocks, 8, 8 if blocks[0] == 128 else 4, 3)
    else:
        M = data.draw(st.integers(1, 70), label="M")
        N = data.draw(st.sampled_from([8, 16, 40, 48, 36, 100]), label="N")
        K = data.draw(st.sampled_from([8, 16, 40, 13]), label="K")  # 13: no TMA at all
        config = (32, 32, 16, 2, 4, 2)
    args, floats = inputs(kernel, Shape(M, N, K), dtype, device=device, seed=M * N + K)
    call = [*args, *floats.values()]
    stores = op.plan(*call, config=(*config, "persistent", 1), save=True)
    pointers = op.plan(*call, config=(*config, "tma", 1), save=True)
    x, weight = args[0], args[1]
    aligned = devices.tma_ready(x, weight) and N * x.element_size() % 16 == 0
    assert (stores.stores is not None) == aligned
    assert stores.launches[0].arguments()["TMA_STORE"] == aligned
    assert not pointers.launches[0].arguments()["TMA_STORE"]
    expected = pointers.run_saving(call)
    inference = op.plan(*call, config=(*config, "persistent", 1)).run(call)
    assert torch.equal(inference, expected[0])
    for _ in range(3):
        out, saved = stores.run_saving(call)
        assert torch.equal(out, expected[0]) and torch.equal(saved, expected[1])
    if device == "cuda":
        assert stores.direct


def test_training_stores_through_descriptors_compile_for_hopper(tmp_path) -> None:
    """The persistent loop's training forward with its two descriptor stores, at the
    128x256 tiles and 8 warps the heuristic gives large problems, compiles for sm90."""
    compiled, module = committed("linear_gelu")
    shape = Shape(512, 512, 64)
    args, floats = inputs(compiled.kernel, shape, torch.bfloat16, device="cpu", seed=1)
    config = (128, 256, 64, 8, 8, 4, "persistent", 1)
    plan = module._OP.plan(*args, *floats.values(), config=config, save=True)
    (launch,) = plan.launches
    values = launch.arguments()
    assert values["TMA_STORE"]
    blocks = {"x_desc": [128, 64], "w_desc": [256, 64]}
    blocks |= {"out_desc": [128, 128], "save_desc": [128, 128]}
    for name, block in blocks.items():
        values[name] = {"desc": torch.bfloat16, "block": block}
    for name in ("x_ptr", "weight_ptr", "bias_ptr", "out_ptr", "save_ptr"):
        values[name] = torch.bfloat16
    values["split_partials_ptr"] = values["split_counts_ptr"] = torch.float32
    compile_for_hopper(
        module,
        [{"kernel": launch.jit.__name__, "args": values, "options": launch.options}],
        tmp_path,
    )


@pytest.mark.parametrize("name", ["gated_residual", "linear_gelu", "row_pools"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_gradient_oracle_rejects_wrong_gradients(name: str, dtype: torch.dtype) -> None:
    """The oracle passes kgen's gradients and fails each with one element made NaN, or
    moved by a few times what it allows: 0.1 % of the gradient's largest value in
    fp32; in 16 bits, 25 % for x's and the weight's (testing.GRAD_ULPS = 8 units of
    the dtype: 6.25 % in bf16, plus twice eager's error). A broadcast operand's
    gradient sums terms that may cancel, and its allowance scales with the terms (in
    bf16, gated_residual's alpha may be off by more than its value), so in 16 bits it
    is checked for NaN only."""
    compiled, module = committed(name)
    kernel = compiled.kernel
    args, floats = inputs(kernel, Shape(24, 32, 40), dtype, device="cpu", seed=11)
    _, dout, grads = _grads(module, kernel, args, floats)
    assert not testing.gradient_errors(kernel, grads, args, dout, **floats)
    names = ["x", "weight"] + (["bias"] if kernel.has_bias else [])
    names += [t.name for t in kernel.tensors]
    moved = 1e-3 if dtype == torch.float32 else 0.25
    for i, g in enumerate(grads):
        wrong_by = [float("nan")]
        if dtype == torch.float32 or i < 2:
            wrong_by.append(float(g.abs().max()) * moved)
        for bad in wrong_by:
            wrong = list(grads)
            wrong[i] = g.clone()
            wrong[i].view(-1)[g.abs().argmax()] += bad
            problems = testing.gradient_errors(kernel, wrong, args, dout, **floats)
            assert any(p.startswith(f"{names[i]}:") for p in problems), (names[i], bad)


def test_training_stores_through_descriptors_only_where_shared_memory_holds_them() -> None:
    """The descriptor stores stage a subtile in shared memory beside the pipeline: a
    configuration whose stages leave no room for it keeps the pointer stores (on an
    H100, fp32 128x256x64 tiles in 3 stages would need 320 KB)."""
    compiled, module = committed("linear_gelu")
    for dtype, config, fits in [
        (torch.bfloat16, (128, 256, 64, 8, 8, 4, "persistent", 1), True),
        (torch.bfloat16, (128, 128, 64, 8, 8, 5, "persistent", 1), True),
        (torch.float32, (128, 128, 32, 8, 8, 3, "persistent", 1), True),
        (torch.bfloat16, (128, 256, 64, 8, 8, 5, "persistent", 1), False),
        (torch.float32, (128, 128, 64, 8, 8, 3, "persistent", 1), False),
    ]:
        args, floats = inputs(compiled.kernel, Shape(256, 512, 64), dtype, device="cpu", seed=1)
        plan = module._OP.plan(*args, *floats.values(), config=config, save=True)
        assert plan.launches[0].arguments()["TMA_STORE"] == fits, (dtype, config)
