"""`kgen bench --ops` on the CPU, in Triton's interpreter: every op's three kernels
(and every row op's) build and run, and the table and the JSON lines come out. Not a
timing test: interpreter times mean nothing. (On the GPU: `kgen bench --ops`.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kgen import cli, opbench, ops


def test_the_cases_cover_every_step_op_and_row_op() -> None:
    cases = opbench.cases(row_ops=True, N=64)
    steps = {n for n, o in ops.OPS.items() if o.step and o.public and n != "bias"}
    assert {c.op for c in cases if c.section == "elementwise"} == steps
    assert {c.op for c in cases if c.section == "row"} == set(ops.ROW_OPS)
    assert [c.op for c in cases if c.section == "identity"] == ["identity"]
    by = {(c.op, c.repeats): c for c in cases}
    assert "epilogue: bias; gelu; gelu; gelu; gelu\n" in by["gelu", 4].text
    assert "input r: [M, N]" in by["residual", 1].text
    assert "epilogue: bias; groupnorm(2)\n" in by["groupnorm", 1].text  # 32 columns a group
    assert by["identity", 0].text.endswith("epilogue: bias\n")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # exp overflows, log of < 0: meant
def test_ops_bench_runs_every_case_in_the_interpreter(tmp_path: Path, capsys) -> None:
    results = tmp_path / "ops.jsonl"
    args = ["--ops", "--quick", "--row-ops", "--dtypes", "float16", "--workers", "0"]
    status = cli.main(["bench", *args, "--results", str(results)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert all(r["error"] is None for r in rows), [r for r in rows if r["error"]]
    assert len(rows) == len(opbench.cases(row_ops=True, N=64))
    # one configuration for all: the identity kernel's
    assert len({tuple(r["config"]) for r in rows if r["section"] != "row"}) == 1
    table = results.with_suffix(".md").read_text()
    assert table in captured.out
    assert "| mish | `mish` |" in table and "| softmax | `softmax` |" in table
    assert "| clamp | `clamp(lo, hi)` |" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--ops", "specs/linear_gelu.fuse"], "give no SPEC"),
        (["bench", "--ops", "--no-compile"], "does not go with --ops"),
        (["bench", "--ops", "--only", "frob"], "no epilogue op"),
        (["bench", "--row-ops", "specs/linear_gelu.fuse", "--shapes", "64x64x64"], "with --ops"),
        (["bench", "--shapes", "64x64x64"], "required: SPEC"),
        (["bench", "specs/linear_gelu.fuse"], "required: --shapes"),
    ],
)
def test_ops_bench_usage_errors(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
