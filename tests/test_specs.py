"""Every spec in specs/: its committed module against the oracle, for any valid call.

Hypothesis draws shapes (1..200 on the CPU, primes and tile sizes +- 1 included),
dtypes, memory layouts, launch configurations and param values (extremes included);
each case is checked with `kgen.testing.check` (float64 oracle, bounded errors).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICES, GENERATED, SPECS, committed, run
from hypothesis import given, note
from hypothesis import strategies as st
from strategies import call_args, problems

from kgen import testing
from kgen.runtime.launch import _SPLIT_COUNTS

SPEC_NAMES = [p.stem for p in SPECS]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SPEC_NAMES)
@given(data=st.data())
def test_spec_matches_reference(name: str, device: str, data: st.DataObject) -> None:
    compiled, module = committed(name)
    kernel = compiled.kernel
    problem = data.draw(problems(device, kernel=kernel), label="problem")
    args, floats = data.draw(call_args(kernel, problem), label="arguments")
    note(f"strides: {[tuple(a.stride()) for a in args]}")
    out = run(module, kernel, problem.config, args, floats)
    assert out.device.type == device
    expected_dtype = getattr(torch, kernel.output_dtype) if kernel.output_dtype else problem.dtype
    assert out.dtype == expected_dtype
    testing.assert_matches_reference(kernel, out, *args, **floats)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_module_matches_its_spec(name: str) -> None:
    """generated/ is what kgen builds from specs/ today (the CLI's --check, per file)."""
    compiled, _ = committed(name)
    path = GENERATED / f"{compiled.kernel.name}.py"
    assert path.read_text() == compiled.source, f"{path} is stale: run `kgen build specs/*.fuse`"


PLAIN_NAMES = [n for n in SPEC_NAMES if not committed(n)[0].kernel.row_ops]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_epilogue_in_two_halves(name: str, dtype: torch.dtype) -> None:
    """256-column tiles run the epilogue on two halves in turn (SUBTILES = 2): every
    spec's epilogue, at N on both sides of the half and of the tile."""
    from kgen.tune import Shape, inputs

    compiled, module = committed(name)
    kernel = compiled.kernel
    for N in (100, 300):
        args, floats = inputs(kernel, Shape(5, N, 20), dtype, device="cpu", seed=N)
        for loop in ("pointer", "persistent"):
            out = run(module, kernel, (16, 256, 16, 1, 4, 2, loop, 1), args, floats)
            testing.assert_matches_reference(kernel, out, *args, **floats)


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_split_k(name: str) -> None:
    """K split among 2, 3 or 5 programs per tile (the last two leave splits with no
    k-steps), both loops: every spec's result matches the reference, equals the unsplit
    sum up to fp32 rounding, and each tile's counter is back at zero for the next launch."""
    from kgen.tune import Shape, inputs

    compiled, module = committed(name)
    kernel = compiled.kernel
    args, floats = inputs(kernel, Shape(40, 50, 70), torch.float32, device="cpu", seed=7)
    plain = run(module, kernel, (32, 32, 16, 1, 4, 3, "pointer", 1), args, floats)
    for loop in ("pointer", "tma", "swap"):
        for split_k in (2, 3, 5):
            out = run(module, kernel, (32, 32, 16, 1, 4, 3, loop, split_k), args, floats)
            testing.assert_matches_reference(kernel, out, *args, **floats)
            torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5, equal_nan=True)
    (counts,) = _SPLIT_COUNTS.values()  # the interpreter's one "stream"
    assert counts.numel() >= 4 and not counts.any()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu"])
def test_split_k_hand_off_on_the_gpu(name: str) -> None:
    """Split-K's hand-off between programs running at once (the interpreter runs them
    one by one): 8 and more programs per tile race to the counter, yet every launch
    gives the same bits (the partials are added in split order) and the reference's
    result, and leaves every counter at zero."""
    from kgen.tune import Shape, inputs

    compiled, module = committed(name)
    kernel = compiled.kernel
    args, floats = inputs(kernel, Shape(256, 512, 8192), torch.float16, seed=5)
    for split_k in (2, 4, 8):
        config = (64, 64, 64, 8, 4, 3, "pointer", split_k)
        first = run(module, kernel, config, args, floats)
        testing.assert_matches_reference(kernel, first, *args, **floats)
        for _ in range(20):
            assert torch.equal(run(module, kernel, config, args, floats), first)
    torch.cuda.synchronize()
    assert all(not counts.any() for counts in _SPLIT_COUNTS.values())
