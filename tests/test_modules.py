"""What a generated module offers (LANGUAGE.md): its function, `ModelNew`, seeded
construction equal to the PyTorch module's, the checks made before any launch, and
the issue's acceptance tolerances against PyTorch itself."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import DEVICES, committed
from hypothesis import given
from hypothesis import strategies as st
from seed_models import SEEDS

from kgen import testing
from kgen.ir import Kind, Role


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(SEEDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@given(
    shape=st.tuples(st.integers(1, 150), st.integers(1, 150), st.integers(1, 150)),
    seed=st.integers(0, 2**31),
)
def test_seed_module_matches_pytorch(
    name: str, dtype: torch.dtype, device: str, shape: tuple[int, int, int], seed: int
) -> None:
    """Same seed -> same parameters as the PyTorch module; outputs within the issue's
    tolerance of PyTorch's (fp32: 1e-4 of fp32; 16-bit: 1e-2 of PyTorch in that dtype)."""
    M, N, K = shape
    compiled, module = committed(name)
    torch_module, extra = SEEDS[name]
    torch.manual_seed(seed)
    ours = module.ModelNew(K, N, *extra).to(device, dtype)
    torch.manual_seed(seed)
    theirs = torch_module(K, N, *extra).to(device, dtype)
    assert torch.equal(ours.weight, theirs.gemm.weight)
    assert torch.equal(ours.bias, theirs.gemm.bias)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    out = ours(x)
    with torch.no_grad():
        expected = theirs(x)
    exact = testing.evaluations(compiled.kernel, x, ours.weight, ours.bias, device=device)[0]
    testing.assert_close_to_pytorch(out, expected, exact)
    testing.assert_matches_reference(compiled.kernel, out, x, ours.weight, ours.bias)


def test_function_and_module_signatures() -> None:
    _, module = committed("gated_residual")
    sig = inspect.signature(module.gated_residual)
    assert list(sig.parameters) == ["x", "weight", "gamma", "alpha", "gate", "residual_in"]
    _, module = committed("gemm_scale_hardtanh_gelu")
    sig = inspect.signature(module.gemm_scale_hardtanh_gelu)
    assert str(sig) == (
        "(x, weight, bias, *, scaling_factor=0.5, hardtanh_min=-2.0, hardtanh_max=2.0)"
    )
    init = inspect.signature(module.ModelNew.__init__)
    assert list(init.parameters) == [
        "self",
        "in_features",
        "out_features",
        "scaling_factor",
        "hardtanh_min",
        "hardtanh_max",
    ]
    _, module = committed("sigmoid_residual")  # `scale` undeclared: required
    assert "scale" in str(inspect.signature(module.sigmoid_residual))
    with pytest.raises(TypeError, match="scale"):
        module.sigmoid_residual(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4))


def test_module_parameters_in_order_with_their_initial_values() -> None:
    compiled, module = committed("gated_residual")
    torch.manual_seed(1)
    model = module.ModelNew(8, 6)
    assert [n for n, _ in model.named_parameters()] == ["weight", "gamma", "alpha"]
    assert model.weight.shape == (8, 6)  # matmul: [IN, OUT], randn
    torch.manual_seed(1)
    assert torch.equal(model.weight, torch.randn(8, 6))
    assert torch.equal(model.gamma, torch.ones(6))
    assert model.alpha.shape == () and model.alpha.item() == 0.5
    compiled, module = committed("scaled_swish")  # init: sizes, beta, temperature, dropout_p
    model = module.ModelNew(4, 5, 1.5, 3.0, 0.1)
    assert model.beta == 1.5 and model.temperature.item() == 3.0
    compiled, module = committed("clamp_select")
    model = module.ModelNew(4, 5)
    assert torch.equal(model.ceiling, torch.full((5,), 0.75))
    assert [o.name for o in compiled.kernel.operands if o.role is Role.INPUT] == ["floor"]
    assert compiled.kernel.operand("floor").kind is Kind.TILE


def test_model_forward_takes_inputs() -> None:
    _, module = committed("gated_residual")
    model = module.ModelNew(8, 6)
    x, gate, residual = torch.randn(5, 8), torch.randn(5), torch.randn(5, 6)
    out = model(x, gate, residual)
    direct = module.gated_residual(x, model.weight, model.gamma, model.alpha, gate, residual)
    assert torch.equal(out, direct)


def test_model_forward_sees_parameters_wherever_pytorch_keeps_them() -> None:
    """ModelNew.forward reads parameters from nn.Module's registry (the fast path), and
    from wherever else PyTorch's tools put them: a parametrization (weight_norm), a plain
    tensor assigned after `del`, torch.func.functional_call's swapped tensors."""
    from torch.nn.utils import parametrizations

    _, module = committed("gated_residual")
    torch.manual_seed(2)
    model = module.ModelNew(8, 6)
    x, gate, residual = torch.randn(5, 8), torch.randn(5), torch.randn(5, 6)

    def direct(weight: torch.Tensor, gamma: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return module.gated_residual(x, weight, gamma, alpha, gate, residual)

    with torch.no_grad():
        assert torch.equal(model(x, gate, residual), direct(model.weight, model.gamma, model.alpha))
        swapped = {
            "weight": torch.randn(8, 6),
            "gamma": torch.randn(6),
            "alpha": torch.tensor(-2.0),
        }
        out = torch.func.functional_call(model, swapped, (x, gate, residual))
        assert torch.equal(out, direct(swapped["weight"], swapped["gamma"], swapped["alpha"]))
        gamma = torch.randn(6)
        del model.gamma
        model.gamma = gamma  # a plain tensor, not a parameter
        assert torch.equal(model(x, gate, residual), direct(model.weight, gamma, model.alpha))
    parametrizations.weight_norm(model, "weight")
    assert "weight" not in model._parameters
    out = model(x, gate, residual)
    assert torch.equal(out, direct(model.weight, gamma, model.alpha))
    out.sum().backward()  # the parametrization's own parameters get the gradient
    assert model.parametrizations.weight.original0.grad is not None


def _seed_call() -> tuple[object, list[torch.Tensor]]:
    _, module = committed("gemm_sigmoid_residual")
    return module, [torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda a: [a[0][0, 0], *a[1:]], ValueError, r"x must be \[\*, K\]"),
        (lambda a: [a[0][0], a[1][0], a[2]], ValueError, "weight must be 2-D"),
        (lambda a: [a[0].unsqueeze(0), a[1][None], a[2]], ValueError, "weight must be 2-D"),
        (lambda a: [a[0], a[1][:, :7], a[2]], ValueError, "K differs"),
        (lambda a: [a[0].unsqueeze(0), a[1][:, :7], a[2]], ValueError, "K differs"),
        (lambda a: [a[0].half(), *a[1:]], TypeError, "same dtype"),
        (lambda a: [a[0].double(), a[1].double(), a[2]], TypeError, "float64"),
        (lambda a: [a[0].int(), a[1].int(), a[2]], TypeError, "int32"),
        (lambda a: [a[0].numpy(), *a[1:]], TypeError, "x must be a torch.Tensor"),
        (lambda a: [a[0], a[1], a[2][:5]], ValueError, r"bias must have shape \[6\]"),
        (lambda a: [a[0], a[1], a[2].int()], TypeError, "bias has dtype int32"),
    ],
)
def test_bad_tensors_are_rejected_before_launch(mutate, error, match) -> None:
    module, args = _seed_call()
    with pytest.raises(error, match=match):
        module.gemm_sigmoid_residual(*mutate(args))


def test_bad_float_params_are_rejected() -> None:
    module, args = _seed_call()
    with pytest.raises(TypeError, match="scaling_factor must be a Python float"):
        module.gemm_sigmoid_residual(*args, scaling_factor=torch.tensor(2.0))
    with pytest.raises(TypeError, match="scaling_factor"):
        module.gemm_sigmoid_residual(*args, scaling_factor="2")
    with pytest.raises(TypeError):
        module.gemm_sigmoid_residual(*args, scaling_fator=2.0)
    out = module.gemm_sigmoid_residual(*args, scaling_factor=3)  # an int is a float
    assert out.shape == (4, 6)


def test_inputs_are_checked() -> None:
    _, module = committed("gated_residual")
    x, w = torch.randn(5, 8), torch.randn(8, 6)
    gamma, alpha = torch.randn(6), torch.tensor(0.5)
    with pytest.raises(ValueError, match=r"gate must have shape \[5\]"):
        module.gated_residual(x, w, gamma, alpha, torch.randn(6), torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"residual_in must have shape \[5, 6\]"):
        module.gated_residual(x, w, gamma, alpha, torch.randn(5), torch.randn(6, 5))
    with pytest.raises(ValueError, match=r"alpha must have shape \[\]"):
        module.gated_residual(x, w, gamma, torch.tensor([0.5]), torch.randn(5), torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"weight is \[K, N\]"):
        module.gated_residual(x, w.T, gamma, alpha, torch.randn(5), torch.randn(5, 6))


def test_empty_and_zero_k_problems() -> None:
    _compiled, module = committed("gemm_sigmoid_residual")
    w, b = torch.randn(6, 8), torch.randn(6)
    out = module.gemm_sigmoid_residual(torch.randn(0, 8), w, b)
    assert out.shape == (0, 6)
    out = module.gemm_sigmoid_residual(torch.randn(3, 0), torch.randn(6, 0), b)
    expected = b + 2.0 * torch.sigmoid(b)  # the epilogue of a zero GEMM, as torch gives
    torch.testing.assert_close(out, expected.expand(3, 6))
    out = module.gemm_sigmoid_residual(torch.randn(3, 8), torch.randn(0, 8), torch.randn(0))
    assert out.shape == (3, 0)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name", ["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu", "linear_softmax"]
)
def test_a_call_can_be_captured_in_a_cuda_graph(name: str) -> None:
    """For fixed shapes, `torch.cuda.graph` captures a call (no host sync, no per-call
    host state the replay would miss): the replay computes what a call computes, for
    new values in the captured input too (README, "Calling it cheaply"). K = 4096 splits
    K (the capture gets its own counters)."""
    compiled, module = committed(name)
    for K in (512,) if compiled.kernel.row_ops else (512, 4096):
        _capture_and_replay(module, compiled.kernel, K)


def _capture_and_replay(module, kernel, K: int) -> None:
    from kgen.tune import Shape, inputs

    fn = getattr(module, kernel.name)
    N = 700 if kernel.row_ops else 1024  # linear_softmax: in two passes
    args, floats = inputs(kernel, Shape(128, N, K), torch.float16, seed=3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and choose before capturing
        fn(*args, **floats)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*args, **floats)
    for seed in (4, 5):
        fresh, _ = inputs(kernel, Shape(128, N, K), torch.float16, seed=seed)
        args[0].copy_(fresh[0])
        graph.replay()
        torch.cuda.synchronize()
        want = fn(*args, **floats)
        assert torch.equal(static_out, want)
        testing.assert_matches_reference(kernel, static_out, *args, **floats)
