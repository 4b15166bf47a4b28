"""The CPU side of tuning and benchmarking: the search space, the tuning file and how a
generated module reads it, the benchmark's eager form, and the GPU commands' errors
without a GPU. (Timing itself needs the H100: `kgen tune`, `kgen bench`.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import triton
from helpers import GENERATED, build_and_import, committed
from hypothesis import given
from hypothesis import strategies as st

from kgen import bench, cli, configs, reference, tune
from kgen.runtime import devices

SPEC = "gemm: linear(in_features, out_features)\nepilogue: bias; gelu\n"


@pytest.mark.parametrize("text", ["2048x8192x8192", "1X2X3"])
def test_shape_parse(text: str) -> None:
    shape = tune.Shape.parse(text)
    assert str(shape).lower() == text.lower()


@pytest.mark.parametrize("text", ["", "1x2", "1x2x3x4", "ax2x3", "1x-2x3", "1.5x2x3"])
def test_bad_shapes_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="MxNxK"):
        tune.Shape.parse(text)


@given(
    M=st.integers(1, 16384),
    N=st.integers(1, 16384),
    K=st.integers(1, 16384),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    tma=st.booleans(),
    num_sms=st.sampled_from([3, 108, 132]),
)
def test_candidates_follow_the_rules(
    M: int, N: int, K: int, dtype: torch.dtype, tma: bool, num_sms: int
) -> None:
    cands = configs.candidates(M, N, K, dtype, tma, num_sms)
    assert cands, "every problem has something to try"
    assert len(cands) <= 44  # one spec x one shape tunes in under 30 s (H100: see configs)
    assert len(set(cands)) == len(cands)
    for c in cands:
        assert configs.is_valid(c)
        bm, bn, bk, _, warps, _, loop, split_k = c
        assert tma or loop == "pointer"
        assert bm * bn // (32 * warps) <= 128  # accumulator values per thread
        if dtype == torch.float32:
            assert bk <= 32
        if loop == "persistent":
            assert triton.cdiv(M, bm) * triton.cdiv(N, bn) > num_sms
        if split_k > 1:
            assert triton.cdiv(M, bm) * triton.cdiv(N, bn) * split_k <= num_sms
            assert triton.cdiv(K, bk) >= 4 * split_k


def test_tuning_file_round_trip_and_format(tmp_path) -> None:
    path = tmp_path / "k.tuning.json"
    tune.record(
        path, "GPU A", torch.float16, tune.Shape(100, 200, 300), (64, 64, 64, 8, 4, 3, "tma", 1)
    )
    tune.record(
        path, "GPU A", torch.float16, tune.Shape(2048, 64, 64), (32, 32, 64, 8, 4, 2, "pointer", 1)
    )
    tune.record(
        path, "GPU A", torch.float16, tune.Shape(128, 256, 512), (64, 64, 32, 8, 4, 3, "pointer", 2)
    )
    table = json.loads(path.read_text())
    assert table == {
        "GPU A": {
            "float16": {
                "128x256x512": [64, 64, 32, 8, 4, 3, "pointer", 2],  # 100x200x300's, re-tuned
                "2048x64x64": [32, 32, 64, 8, 4, 2, "pointer", 1],
            }
        }
    }
    assert '"2048x64x64": [32, 32, 64, 8, 4, 2, "pointer", 1]' in path.read_text()


def test_module_launches_its_tuned_configuration(tmp_path) -> None:
    compiled, module = build_and_import(SPEC, tmp_path)
    x = torch.randn(20, 48)
    tuned = [16, 32, 16, 1, 4, 2, "pointer", 2]
    path = tmp_path / f"{compiled.kernel.name}.tuning.json"
    path.write_text(json.dumps({"interpreter": {"float32": {configs.bucket(20, 40, 48): tuned}}}))
    op = module._OP
    op.tuning.update(devices.load_tuning(str(path)))
    op.forget()
    try:
        assert op.choose(20, 40, 48, x.dtype, True, x.device) == tuple(tuned)
        assert op.choose(20, 40, 48, torch.float16, True, x.device) == configs._heuristic(
            20, 40, 48, torch.float16, True, 3
        )  # another dtype: not tuned
        plan = op.plan(x, torch.randn(40, 48), torch.randn(40))
        assert plan.launches[0].arguments()["SPLIT_K"] == 2  # a call plans with it
    finally:
        op.tuning.clear()
        op.forget()


def test_a_tuned_tma_configuration_is_not_used_where_tma_cannot_run(tmp_path) -> None:
    _, module = build_and_import(SPEC, tmp_path)
    x = torch.randn(20, 48)
    op = module._OP
    op.tuning["interpreter"] = {
        "float32": {configs.bucket(20, 40, 48): [16, 32, 16, 1, 4, 2, "persistent", 1]}
    }
    try:
        assert op.choose(20, 40, 48, x.dtype, False, x.device) == configs._heuristic(
            20, 40, 48, torch.float32, False, 3
        )
    finally:
        op.tuning.clear()


@pytest.mark.parametrize(
    "name", ["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu", "gated_residual"]
)
def test_benchmark_eager_form_is_the_spec(name: str) -> None:
    compiled, _ = committed(name)
    kernel = compiled.kernel
    args, floats = tune.inputs(kernel, tune.Shape(8, 16, 32), torch.float32, device="cpu")
    eager = bench.eager_function(kernel)
    expected = reference.evaluate(kernel, *args, dtype=torch.float64, **floats)
    for _ in range(2):  # the second call reuses the constants made by the first
        got = eager(*args, **floats)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_benchmark_table_and_gpu_name() -> None:
    row = bench.Row("k", 2048, 8192, 8192, "float16", "-", 0.4, 0.5, None, 0.39)
    table = bench.table([row])
    assert "| k | 2048×8192×8192 | float16 |" in table and "| 1.25 | – | 0.97 |" in table
    assert bench.gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert bench.gpu_slug("NVIDIA A100-SXM4-40GB") == "a100"


@pytest.mark.parametrize("command", ["tune", "bench"])
def test_gpu_commands_without_a_gpu(command: str, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as info:
        cli.main([command, "specs/gemm_sigmoid_residual.fuse", "--shapes", "64x64x64"])
    assert info.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes", "64x64"], "not MxNxK"),
        (["--shapes", "64x64x64", "--dtypes", "float64"], "unknown dtype"),
    ],
)
def test_gpu_commands_reject_bad_options(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["tune", "specs/gemm_sigmoid_residual.fuse", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_committed_tuning_files_hold_candidates() -> None:
    """Every measured choice in generated/*.tuning.json is a valid configuration that
    today's search space still offers for its bucket (on an H100 or H200: 132 SMs), or
    the heuristic's own choice, which `kgen tune` always times beside them."""
    files = sorted(GENERATED.glob("*.tuning.json"))
    assert files
    for path in files:
        assert (GENERATED / path.name.replace(".tuning.json", ".py")).exists(), path
        for gpu, by_dtype in json.loads(path.read_text()).items():
            assert gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA H200")
            for dtype, by_bucket in by_dtype.items():
                for bucket, config in by_bucket.items():
                    M, N, K = (int(v) for v in bucket.split("x"))
                    assert configs.bucket(M, N, K) == bucket
                    config = tuple(config)
                    assert configs.is_valid(config), (path.name, bucket, config)
                    cands = configs.candidates(M, N, K, getattr(torch, dtype), True, 132)
                    cands.append(configs.choose_config(M, N, K, getattr(torch, dtype), True))
                    assert config in cands, (path.name, bucket, config)


@pytest.mark.parametrize(
    ("text", "warns"),
    [
        ('{"interpreter": ', True),  # cut short (a half-resolved merge, say)
        ("[1, 2]", True),  # not a table
        ("\x00\xff", True),  # not text
        ('{"interpreter": [1]}', False),  # a table whose entries are unusable
    ],
)
def test_a_broken_tuning_file_falls_back_to_the_heuristic(text: str, warns: bool, tmp_path) -> None:
    path = tmp_path / "spec.tuning.json"
    path.write_text(text, encoding="latin-1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = devices.load_tuning(str(path))
    assert any("not a kgen tuning file" in str(w.message) for w in caught) == warns
    assert isinstance(table, dict)
    bucket = configs.bucket(20, 40, 48)
    assert configs._tuned(table.get("interpreter", {}), torch.float32, bucket, True) is None


@pytest.mark.parametrize(
    "entry",
    [
        [64, 64, 32],  # too short
        [64, 64, 32, 8, 4, 2, "pointer"],  # before split-K: no split_k
        [64, 64, 32, 8, 4, 2, "warp_specialized", 1],  # no such loop
        [64, 64, "32", 8, 4, 2, "pointer", 1],  # not an int
        [64, 0, 32, 8, 4, 2, "pointer", 1],
        [64, 64, 32, 8, 4, 2, "pointer", 0],  # no split
        [64, 64, 32, 8, 4, 2, "persistent", 2],  # a persistent loop does not split
        {"block_m": 64},
    ],
)
def test_an_unusable_tuned_entry_is_ignored(entry: object, tmp_path) -> None:
    table = {"float32": {configs.bucket(20, 40, 48): entry}}
    assert configs._tuned(table, torch.float32, configs.bucket(20, 40, 48), True) is None


def test_expanded_or_overlapping_rows_do_not_go_through_tma() -> None:
    weight = torch.randn(40, 48)
    assert devices.tma_ready(torch.randn(20, 48), weight)
    assert not devices.tma_ready(torch.randn(1, 48).expand(20, 48), weight)
    assert not devices.tma_ready(torch.randn(20 * 8 + 48).as_strided((20, 48), (8, 1)), weight)
    assert not devices.tma_ready(torch.randn(20, 48), torch.randn(1, 48).expand(40, 48))


@pytest.mark.parametrize(("option", "value"), [("--shapes", ","), ("--dtypes", " ")])
def test_gpu_commands_reject_empty_lists(option: str, value: str, capsys) -> None:
    args = {"--shapes": "64x64x64", "--dtypes": "float16"}
    args[option] = value
    with pytest.raises(SystemExit) as info:
        cli.main(
            ["bench", "specs/gemm_sigmoid_residual.fuse", *(x for kv in args.items() for x in kv)]
        )
    assert info.value.code == 2
    assert "names no" in capsys.readouterr().err


def test_benchmark_results_file_must_be_a_list_of_rows(tmp_path) -> None:
    path = tmp_path / "r.json"
    assert bench.read_rows(path) == []
    path.write_text('{"spec": 1}')
    with pytest.raises(ValueError, match="not a list"):
        bench.read_rows(path)
    path.write_text('[{"spec": "k"}]')
    with pytest.raises(TypeError):
        bench.read_rows(path)
    row = bench.Row("k", 1, 2, 3, "float16", "-", 0.1, 0.2, None, 0.1, "GPU")
    path.unlink()
    bench.append_rows(path, [row])
    bench.append_rows(path, [row])
    assert bench.read_rows(path) == [row, row]


def test_recording_into_a_file_that_is_not_a_tuning_file_fails_cleanly(tmp_path) -> None:
    path = tmp_path / "k.tuning.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="not a kgen tuning file"):
        tune.record(
            path, "GPU", torch.float16, tune.Shape(1, 2, 3), (32, 32, 32, 8, 4, 2, "pointer", 1)
        )
    assert path.read_text() == "[]"


def test_fp32_precision_benchmark_script_runs(tmp_path) -> None:
    """bench/fp32_precisions.py's accuracy half, on the CPU with a small shape."""
    done = subprocess.run(
        [sys.executable, "bench/fp32_precisions.py", "--shape", "16x24x40", "--no-time"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| gemm_")]
    assert len(rows) == 8 and all("| True |" in r for r in rows), done.stdout
