"""Every op's Triton lowering against torch in float64, over the whole fp32 range.

Each op is built through the real pipeline as a one-step spec whose GEMM is
x[M, 1] @ [[1]] in plain fp32 (`precision: ieee`: tf32 modes split operands, so FLT_MAX
would round to inf and subnormals lose bits), so the accumulator is exactly the test
value. Values cover zeros,
tiny and huge magnitudes, each op's switch points, and +-Inf and NaN. Checked:

- NaN exactly where torch gives NaN, never for a finite input where torch is finite;
- infinities exactly where torch's float64 result overflows fp32;
- elsewhere, relative error <= (op.ulps + COND_ULPS * kappa) * 2^-24, with op.ulps
  the op's own bound (LANGUAGE.md, "Accuracy") and kappa the condition number
  |x f'(x) / f(x)|: the result must be exact for an input within a few ulps of the
  true one (what fp32 exp(80) can achieve, and no more).

The values are the points above and a dense sweep of [-30, 30] (every form's switch
points and polynomial ranges lie inside it). This is what `kgen.testing` assumes of
each op (`OpDef.ulps`), and what the GPU tier measures for the GPU's approximate exp
and division (ex2.approx.f32, div.full.f32), which the interpreter computes exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
from helpers import DEVICES, build_and_import, import_file

from kgen import ops

COND_ULPS = 4.0
FP32 = torch.finfo(torch.float32)

_MAGNITUDES = [0.0, 1e-38, 1e-30, 1e-20, 1e-10, 1e-7, 1e-4, 1e-3, 0.01, 0.1, 0.124, 0.125, 0.126]
_MAGNITUDES += [0.3, 0.4999, 0.5, 0.5001, 0.7, 1.0, 1.5, 2.0, 2.9999, 3.0, 3.0001, 4.0, 5.0, 6.0]
_MAGNITUDES += [
    7.5,
    10.0,
    15.0,
    19.99,
    20.0,
    20.01,
    30.0,
    44.0,
    45.0,
    80.0,
    88.0,
    88.8,
    89.0,
    100.0,
]
_MAGNITUDES += [1e3, 1e4, 1e6, 1e10, 1e20, 1e30, 1e38, FP32.max]
VALUES = torch.tensor(
    [*sorted({s * m for m in _MAGNITUDES for s in (1.0, -1.0)}), math.inf, -math.inf, math.nan],
    dtype=torch.float32,
)
# every 2^-6 from -30 to 30, and 0.55 and 0.5 (switch points) give or take an ulp
_DENSE = torch.linspace(-30.0, 30.0, 3841, dtype=torch.float32)
_EDGES = torch.tensor([0.55, 0.5], dtype=torch.float32)
_EDGES = torch.cat([_EDGES, _EDGES.nextafter(torch.zeros(2)), _EDGES.nextafter(torch.ones(2))])
SWEEP = torch.cat([VALUES, _DENSE, _EDGES, -_EDGES])

# (step as written in the spec, torch reference in float64) for each public op.
_VECTOR = "0.75"  # the argument of binary ops: a constant keeps acc the only input


def _cases() -> list[str]:
    steps = []
    for name in ops.public_names():
        op = ops.lookup(name)
        assert op is not None
        if not op.step or op.implicit or any(p.type is ops.ArgType.TILE for p in op.params):
            continue  # where, bias and residual are arithmetic on other tensors
        args = [_VECTOR if p.default is None else repr(p.default) for p in op.params]
        steps.append(f"{name}({', '.join(args)})" if args else name)
        if name in ("softplus", "elu", "celu", "leaky_relu", "hardtanh"):
            variants = {
                "softplus": "softplus(beta=-2, threshold=5)",
                "elu": "elu(0.3)",
                "celu": "celu(alpha=3)",
                "leaky_relu": "leaky_relu(-0.5)",
                "hardtanh": "hardtanh(2, -2)",
            }
            steps.append(variants[name])
    return steps


CASES = _cases()


def _condition(op_step: str, compiled: object, values: torch.Tensor) -> torch.Tensor:
    from kgen import reference

    kernel = compiled.kernel  # type: ignore[attr-defined]
    x = values.to(torch.float64).reshape(-1, 1).clone().requires_grad_(True)
    y = reference.epilogue(kernel, x, {})
    (grad,) = torch.autograd.grad(y.sum(), x)
    with torch.no_grad():
        return (x * grad / y).abs().nan_to_num(nan=0.0, posinf=math.inf).reshape(-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step", CASES)
def test_op_accuracy(step: str, device: str, tmp_path) -> None:
    compiled, module = build_and_import(
        f"gemm: linear(1, 1, bias=false)\nprecision: ieee\nepilogue: {step}\n", tmp_path, "op.fuse"
    )
    values = SWEEP
    x = values.reshape(-1, 1).to(device)
    weight = torch.ones(1, 1, device=device)
    out = getattr(module, compiled.kernel.name)(x, weight).reshape(-1).cpu().double()

    from kgen import reference

    op = ops.lookup(step.split("(")[0])
    assert op is not None
    exact = reference.epilogue(compiled.kernel, values.double().reshape(-1, 1), {}).reshape(-1)
    expected = exact.to(torch.float32).double()  # overflow where fp32 overflows
    finite_in = torch.isfinite(values)
    nan_exp, nan_got = torch.isnan(expected), torch.isnan(out)
    bad_nan = (nan_got != nan_exp) & finite_in
    assert not bad_nan.any(), f"{step}: NaN mismatch at x = {values[bad_nan].tolist()}"
    # infinite inputs: NaN where torch gives NaN, otherwise torch's value
    inf_in = torch.isinf(values)
    for i in torch.nonzero(inf_in).reshape(-1).tolist():
        if not (nan_exp[i] and nan_got[i]):
            assert (
                out[i] == expected[i]
            ), f"{step}({values[i].item()}) = {out[i]}, torch {expected[i]}"
    inf_exp = torch.isinf(expected) & finite_in
    assert torch.equal(out[inf_exp], expected[inf_exp]), f"{step}: overflow mismatch"

    check = finite_in & torch.isfinite(expected) & (expected.abs() > FP32.tiny)
    kappa = _condition(step, compiled, values)
    rel = ((out - exact).abs() / exact.abs())[check]
    limit = ((op.ulps + COND_ULPS * kappa) * 2.0**-24)[check]
    worst = int(torch.argmax(rel / limit))
    xs = values[check]
    assert bool((rel <= limit).all()), (
        f"{step}({xs[worst].item()!r}) = {out[check][worst].item()!r}, exact "
        f"{exact[check][worst].item()!r}: {rel[worst].item() / 2**-24:.1f} ulps, allowed "
        f"{limit[worst].item() / 2**-24:.1f}"
    )
    # results that underflow: absolute error at the scale of the smallest normal
    tiny = finite_in & torch.isfinite(expected) & ~check & ~nan_exp
    assert bool(((out - exact).abs()[tiny] <= 2 * FP32.tiny).all()), f"{step}: underflow"


def test_every_public_op_is_tested() -> None:
    tested = {c.split("(")[0] for c in CASES}
    skipped = {"where", "bias", "residual"}
    assert tested | skipped == set(ops.public_names())


def test_softplus_reference_overflows_beta_x_like_fp32() -> None:
    """softplus's z = beta x overflows in the kernel's fp32 and in PyTorch's fp32
    softplus; the float64 reference overflows it too, so it agrees with both at the
    threshold (a Hypothesis draw: x = 20, beta = -FLT_MAX, threshold = -Inf)."""
    beta, threshold = -torch.finfo(torch.float32).max, -math.inf
    x = torch.tensor([20.0, -3.0, 0.0])
    torch_fp32 = torch.nn.functional.softplus(x, beta=beta, threshold=threshold)
    reference = ops.OPS["softplus"].reference(x.double(), beta, threshold)
    assert torch.equal(reference.float(), torch_fp32)
    assert str(reference[0].item()) == "-0.0"


def test_softplus_reference_has_finite_gradients() -> None:
    """kgen.testing's error bound differentiates the reference: the fp32 overflow of
    beta x must not turn the gradient into NaN (0 * Inf) where it does not overflow,
    which would zero the bound (a Hypothesis draw: x = -12, beta = 2.5, threshold = 0)."""
    x = torch.tensor([-12.0, 0.5, 30.0], dtype=torch.float64, requires_grad=True)
    ops.OPS["softplus"].reference(x, 2.5, 0.0).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# A kernel applying one helper, in a real file (the GPU cannot run exec'd kernels).
_HELPER_KERNEL = """
import triton
import triton.language as tl

{source}


@triton.jit
def apply(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, {helper}(tl.load(x_ptr + offs, mask=mask, other=0.0)), mask=mask)
"""

ABSOLUTE_CASES = sorted(name for name, op in ops.OPS.items() if op.absolute)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ABSOLUTE_CASES)
def test_absolute_form_accuracy(name: str, device: str, tmp_path) -> None:
    """An op's absolute-error form (ops.absolute_forms) keeps its promise over the whole
    fp32 range: within op.ulps units of max(|f(x)|, 1) of torch's float64 value, NaN and
    infinities exactly where torch's are. Values near the form's worst case (|x| / 2
    times erf's error, x about -5 for GELU) are included."""
    from kgen import tlib

    opdef = ops.OPS[name]
    (helper,) = opdef.absolute_helpers
    source = "\n\n".join(h.source.strip("\n") for h in tlib.closure(set(opdef.absolute_helpers)))
    path = tmp_path / f"absolute_{name}.py"
    path.write_text(_HELPER_KERNEL.format(source=source, helper=helper))
    module = import_file(path)
    dense = torch.linspace(-7.0, 7.0, 4001, dtype=torch.float32)
    values = torch.cat([VALUES, dense])
    x = values.to(device)
    y = torch.empty_like(x)
    module.apply[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    got = y.cpu().double()
    exact = opdef.reference(values.double())
    finite = torch.isfinite(exact)
    assert torch.equal(torch.isnan(got), torch.isnan(exact)), f"{name}: NaN mismatch"
    assert torch.equal(got[torch.isinf(exact)], exact[torch.isinf(exact)]), f"{name}: Inf"
    error = (got - exact).abs()[finite]
    limit = opdef.ulps * 2.0**-24 * exact.abs()[finite].clamp(min=1.0)
    worst = int(torch.argmax(error / limit))
    assert bool((error <= limit).all()), (
        f"{name}({values[finite][worst].item()!r}) = {got[finite][worst].item()!r}, exact "
        f"{exact[finite][worst].item()!r}: error {error[worst].item():.3g}, allowed "
        f"{limit[worst].item():.3g}"
    )


def test_gelu_takes_its_absolute_form_only_before_softmax(tmp_path) -> None:
    """gelu feeding a softmax alone is lowered to _gelu_erf; anywhere else (stored, used
    by another op, before a log_softmax) it keeps the accurate _gelu."""
    cases = {
        "bias; gelu; softmax": True,
        "bias; gelu; softmax; gelu": True,  # the first gelu only
        "bias; gelu": False,
        "bias; gelu; log_softmax": False,
        "bias; gelu; scale(2); softmax": False,
    }
    for steps, absolute in cases.items():
        compiled, _ = build_and_import(f"epilogue: {steps}\n", tmp_path, "g.fuse")
        assert ("_gelu_erf(" in compiled.source) == absolute, steps
        gelus = [i.id for i in compiled.kernel.body if i.op == "gelu"]
        assert ops.absolute_forms(compiled.kernel) == frozenset(gelus[:1] if absolute else ())
