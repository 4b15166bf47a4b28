"""Random specs composed from the op registry, built, imported and run vs the oracle.

Each example draws a spec (`strategies.random_specs`: a gemm form, operands of every
kind, 1-6 steps of random ops, bindings and expressions), compiles it through the
whole pipeline into a real module file, imports it and checks one random call.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DEVICES, build_and_import, run
from hypothesis import given, note
from hypothesis import strategies as st
from strategies import call_args, problems, random_specs

from kgen import testing


@pytest.mark.parametrize("device", DEVICES)
@given(spec=random_specs(), data=st.data())
def test_random_spec_matches_reference(
    spec: str, device: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    note(spec)
    compiled, module = build_and_import(spec, tmp_path_factory.mktemp("chain"), "chain.fuse")
    kernel = compiled.kernel
    problem = data.draw(problems(device), label="problem")
    args, floats = data.draw(call_args(kernel, problem), label="arguments")
    out = run(module, kernel, problem.config, args, floats)
    expected = getattr(torch, kernel.output_dtype) if kernel.output_dtype else problem.dtype
    assert out.dtype == expected
    testing.assert_matches_reference(kernel, out, *args, **floats)
