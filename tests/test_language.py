"""grammar/LANGUAGE.md is the contract: every example on it builds and runs correctly,
and its op table names every op kgen has."""

from __future__ import annotations

import re

import pytest
from helpers import DEVICES, ROOT, build_and_import
from hypothesis import given
from hypothesis import strategies as st
from strategies import call_args, problems

from kgen import ops, testing

LANGUAGE = (ROOT / "grammar" / "LANGUAGE.md").read_text()
BLOCKS = re.findall(r"```\n(.*?)```", LANGUAGE, flags=re.S)
EXAMPLES = [b for b in BLOCKS if "epilogue:" in b]


def test_the_page_has_its_examples() -> None:
    assert len(EXAMPLES) >= 5  # the smallest spec, the 3 of "Examples", and kgen's own


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(len(EXAMPLES)))
@given(data=st.data())
def test_example_builds_and_matches_reference(
    index: int, device: str, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    compiled, module = build_and_import(
        EXAMPLES[index], tmp_path_factory.mktemp("lang"), f"example_{index}.fuse"
    )
    kernel = compiled.kernel
    problem = data.draw(problems(device))
    args, floats = data.draw(call_args(kernel, problem))
    out = getattr(module, kernel.name)(*args, **floats)
    assert out.device.type == device and out.shape == (problem.M, problem.N)
    testing.assert_matches_reference(kernel, out, *args, **floats)


def test_op_table_names_every_op() -> None:
    table = LANGUAGE.split("## Built-in ops")[1].split("## Row operations")[0]
    documented = set(re.findall(r"`([a-z_0-9]+)[`(]", table))
    assert not set(ops.public_names()) - documented, set(ops.public_names()) - documented


def test_documented_defaults_are_the_registry_defaults() -> None:
    table = LANGUAGE.split("## Built-in ops")[1].split("## Row operations")[0]
    for name, args in re.findall(r"`([a-z_]+)\(([^)`]*=[^)`]*)\)`", table):
        op = ops.lookup(name)
        assert op is not None, name
        for part in args.split(","):
            key, _, value = part.strip().partition("=")
            if value:
                param = next(p for p in op.params if p.name == key)
                assert param.default == float(value), (name, key)


def test_row_operations_are_documented() -> None:
    section = LANGUAGE.split("## Row operations")[1].split("## Dtypes")[0]
    named = set(re.findall(r"`([a-z_]+)[`(]", section))
    assert not set(ops.ROW_OPS) - named, set(ops.ROW_OPS) - named


def test_accuracy_table_states_every_ops_bound() -> None:
    """LANGUAGE.md's "Accuracy" table gives each op the bound its registry entry holds
    (OpDef.ulps: what kgen.testing charges and tests/test_numerics.py enforces)."""
    section = LANGUAGE.split("## Accuracy")[1].split("\n## ")[0]
    stated: dict[str, float] = {}
    for names, bound in re.findall(r"^\| ((?:`[a-z_0-9]+` ?)+) \| ([0-9.]+) \|$", section, re.M):
        for name in re.findall(r"`([a-z_0-9]+)`", names):
            stated[name] = float(bound)
    public = {name: ops.OPS[name] for name in ops.OPS if ops.OPS[name].public}
    assert set(stated) == set(public)
    assert all(stated[name] == op.ulps for name, op in public.items())
