"""Tuning at first use (KGEN_AUTOTUNE=1, kgen/runtime/autotune.py): the switch, the cache
on disk and its key, and what a call launches with and without them. The search itself
times kernels, so the CPU tier stands a recorded search in for it; the GPU tier runs the
real one in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import ROOT, build_and_import

from kgen import configs, tune
from kgen.runtime import autotune, devices
from kgen.runtime import search as runtime_search

SPEC = "gemm: linear(in_features, out_features)\nepilogue: bias; gelu\n"
OTHER = "gemm: linear(in_features, out_features)\nepilogue: bias; relu\n"
M, N, K = 20, 40, 48
TUNED = (16, 32, 16, 1, 4, 2, "pointer", 2)  # not the heuristic's choice at 20x40x48


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(autotune.ENV, "1")
    autotune.forget()
    yield tmp_path / "cache"
    autotune.forget()


def _args() -> tuple[torch.Tensor, ...]:
    return torch.randn(M, K), torch.randn(N, K), torch.randn(N)


def _split_k(op, *args) -> int:
    op.forget()
    return int(op.plan(*args).launches[0].arguments()["SPLIT_K"])


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False), ("off", False)],
)
def test_the_switch(value: str, on: bool, monkeypatch) -> None:
    monkeypatch.setenv(autotune.ENV, value)
    assert autotune.enabled() is on


def test_without_the_switch_nothing_is_read_or_written(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(autotune.ENV, raising=False)
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    _, module = build_and_import(SPEC, tmp_path)
    op = module._OP
    path = autotune.cache_path(op)
    tune.record(path, "interpreter", torch.float32, tune.Shape(M, N, K), TUNED)
    autotune.forget()
    args = _args()
    assert _split_k(op, *args) == configs._heuristic(M, N, K, torch.float32, True, 3)[7]
    monkeypatch.setenv(autotune.ENV, "1")
    assert _split_k(op, *args) == 2  # the same file, read once the switch is on
    autotune.forget()


def test_the_cache_key_is_the_kernel_and_the_versions(cache, tmp_path) -> None:
    _, a = build_and_import(SPEC, tmp_path)
    _, a_again = build_and_import(SPEC, tmp_path)
    _, b = build_and_import(OTHER, tmp_path)
    path = autotune.cache_path(a._OP)
    assert path.parent == cache / "tuning"
    assert path.name.startswith(a._OP.name + "-") and path.suffix == ".json"
    assert autotune.cache_path(a_again._OP) == path  # the same kernel, built again
    assert autotune.cache_path(b._OP) != path


def test_cache_dir_defaults(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(autotune.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert autotune.cache_dir() == tmp_path / "kgen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert autotune.cache_dir() == Path.home() / ".cache" / "kgen"
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "mine"))
    assert autotune.cache_dir() == tmp_path / "mine"


class _Searched:
    """Stands in for kgen.runtime.search.search: records its calls, returns a fixed winner."""

    def __init__(self, config: configs.Config | None, error: Exception | None = None) -> None:
        self.config, self.error, self.calls = config, error, []

    def __call__(self, op, call, M, N, K, dtype, tma, facts, desc=""):
        self.calls.append((tune.Shape(M, N, K), dtype))
        if self.error is not None:
            raise self.error
        if self.config is None:
            return None, []
        best = tune.Candidate(self.config, ms=0.010)
        return best, [best, tune.Candidate(configs._heuristic(M, N, K, dtype, tma, 3), ms=0.02)]


@pytest.fixture
def searchable(monkeypatch):
    """As on a GPU: the search may run (the interpreter's kernels still launch)."""
    monkeypatch.setattr(autotune, "_timeable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)


def test_first_use_searches_once_records_and_launches_the_winner(
    cache, searchable, tmp_path, monkeypatch, capsys
) -> None:
    _, module = build_and_import(SPEC, tmp_path)
    op = module._OP
    search = _Searched(TUNED)
    monkeypatch.setattr(runtime_search, "search", search)
    args = _args()
    assert _split_k(op, *args) == 2
    assert search.calls == [(tune.Shape(M, N, K), torch.float32)]
    err = capsys.readouterr().err
    assert f"kgen: tuning {op.name} {M}x{N}x{K} float32 on interpreter" in err
    assert "KGEN_AUTOTUNE=1" in err and str(autotune.cache_path(op)) in err
    assert "10.0 us (untuned 20.0 us" in err
    table = json.loads(autotune.cache_path(op).read_text())
    assert table == {"interpreter": {"float32": {configs.bucket(M, N, K): list(TUNED)}}}

    # the same bucket again, in this process and in a later one: no search
    assert _split_k(op, torch.randn(17, K), args[1], args[2]) == 2
    autotune.forget()  # as a new process finds it: on disk
    _, again = build_and_import(SPEC, tmp_path)
    assert _split_k(again._OP, *args) == 2
    assert len(search.calls) == 1 and "tuning" not in capsys.readouterr().err

    # another dtype is another entry of the same file
    half = [a.half() for a in args]
    assert _split_k(op, *half) == 2
    assert len(search.calls) == 2
    assert set(json.loads(autotune.cache_path(op).read_text())["interpreter"]) == {
        "float16",
        "float32",
    }


def test_a_committed_tuning_entry_wins_over_the_cache(cache, searchable, tmp_path, monkeypatch):
    _, module = build_and_import(SPEC, tmp_path)
    op = module._OP
    monkeypatch.setattr(runtime_search, "search", _Searched(TUNED))
    committed = [32, 32, 16, 1, 4, 2, "pointer", 1]
    op.tuning["interpreter"] = {"float32": {configs.bucket(M, N, K): committed}}
    try:
        assert _split_k(op, *_args()) == 1
        assert not autotune.cache_path(op).exists()
    finally:
        op.tuning.clear()


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (_Searched(None), "no candidate ran"),
        (_Searched(TUNED, RuntimeError("boom")), r"failed \(boom\)"),
    ],
)
def test_a_failed_search_warns_and_the_call_runs_untuned(
    search, message, cache, searchable, tmp_path, monkeypatch
) -> None:
    _, module = build_and_import(SPEC, tmp_path)
    op = module._OP
    monkeypatch.setattr(runtime_search, "search", search)
    args = _args()
    with pytest.warns(UserWarning, match=message):
        op.forget()
        out = op(*args)
    heuristic = configs._heuristic(M, N, K, torch.float32, True, 3)
    assert torch.equal(out, op.launch(heuristic, *args))
    assert not autotune.cache_path(op).exists()


def test_an_unwritable_cache_warns_and_keeps_the_tuned_configuration(
    searchable, tmp_path, monkeypatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(autotune.CACHE_ENV, str(blocker))
    monkeypatch.setenv(autotune.ENV, "1")
    autotune.forget()
    _, module = build_and_import(SPEC, tmp_path)
    monkeypatch.setattr(runtime_search, "search", _Searched(TUNED))
    with pytest.warns(UserWarning, match="cannot record"):
        assert _split_k(module._OP, *_args()) == 2
    autotune.forget()


def test_no_search_under_the_interpreter_or_during_graph_capture(
    cache, tmp_path, monkeypatch
) -> None:
    _, module = build_and_import(SPEC, tmp_path)
    op = module._OP
    search = _Searched(TUNED)
    monkeypatch.setattr(runtime_search, "search", search)
    heuristic_split = configs._heuristic(M, N, K, torch.float32, True, 3)[7]
    assert _split_k(op, *_args()) == heuristic_split  # the interpreter: nothing to time
    monkeypatch.setattr(autotune, "_timeable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _split_k(op, *_args()) == heuristic_split
    assert search.calls == [] and not autotune.cache_path(op).exists()


def test_a_broken_cache_file_warns_and_is_searched_again(
    cache, searchable, tmp_path, monkeypatch
) -> None:
    _, module = build_and_import(SPEC, tmp_path)
    op = module._OP
    path = autotune.cache_path(op)
    path.parent.mkdir(parents=True)
    path.write_text('{"interpreter": ')
    search = _Searched(TUNED)
    monkeypatch.setattr(runtime_search, "search", search)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _split_k(op, *_args()) == 2
    assert any("not a kgen tuning file" in str(w.message) for w in caught)
    assert len(search.calls) == 1
    assert json.loads(path.read_text())["interpreter"]["float32"]


_GPU_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
from helpers import committed
from kgen.testing import assert_matches_reference
compiled, module = committed("linear_gelu")
torch.manual_seed(0)  # the same inputs in both processes
x = torch.randn(96, 1024, device="cuda", dtype=torch.half)
w = torch.randn(768, 1024, device="cuda", dtype=torch.half) / 32
b = torch.randn(768, device="cuda", dtype=torch.half)
out = module.linear_gelu(x, w, b)
assert_matches_reference(compiled.kernel, out, x, w, b)
torch.save(out.cpu(), sys.argv[1])
"""


@pytest.mark.gpu
def test_first_use_tuning_on_the_gpu(tmp_path) -> None:
    """Two fresh processes with the switch on: the first searches, prints and records;
    the second finds the entry and does not search; both give the same bytes."""
    env = {
        **os.environ,
        autotune.ENV: "1",
        autotune.CACHE_ENV: str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    child = _GPU_CHILD.format(root=str(ROOT / "tests"))
    runs = []
    for i in range(2):
        done = subprocess.run(
            [sys.executable, "-c", child, str(tmp_path / f"out{i}.pt")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        runs.append(done)
    assert "kgen: tuning linear_gelu 96x768x1024 float16" in runs[0].stderr
    assert "kgen: tuning" not in runs[1].stderr
    files = list((tmp_path / "cache" / "tuning").glob("linear_gelu-*.json"))
    assert len(files) == 1
    table = json.loads(files[0].read_text())
    (gpu,) = table
    assert gpu == torch.cuda.get_device_name()
    assert configs.bucket(96, 768, 1024) in table[gpu]["float16"]
    assert torch.equal(torch.load(tmp_path / "out0.pt"), torch.load(tmp_path / "out1.pt"))


ROWS = "gemm: linear(in_features, out_features)\nepilogue: bias; softmax\n"


@pytest.mark.parametrize("text", [SPEC, ROWS])
def test_the_search_times_survivors_and_picks_the_fastest(text: str, tmp_path, monkeypatch):
    """kgen.runtime.search.search (kgen tune's and first use's) with the compiler's
    report and the clock stood in for: spilling candidates are dropped except the
    heuristic's, which is always timed; the fastest survivor wins; a kernel with row
    operations never splits K."""
    _, module = build_and_import(text, tmp_path)
    op = module._OP
    facts = devices.device(torch.device("cpu"))
    shape = (64, 64, 4096)  # long K: split-K candidates exist
    default = configs._heuristic(*shape, torch.float16, True, facts.num_sms, facts.smem)
    if op.rows is not None:
        default = (*default[:7], 1)
    seen: list[configs.Config] = []

    def compile_all(op_, cands, call, tma):
        seen.extend(cands)
        return [
            runtime_search.Candidate(c, regs=128, spills=100 if i % 3 == 0 or c == default else 0)
            for i, c in enumerate(cands)
        ]

    class Plan:
        def __init__(self, config):
            self.config = config

        def run(self, call):
            return self.config

    times: dict[configs.Config, float] = {}  # each survivor its own time, the heuristic's slowest

    def median_ms(fn, warmup=25, rep=100):
        config = fn()
        return times.setdefault(config, 2.0 if config == default else 1.0 + 0.01 * len(times))

    monkeypatch.setattr(runtime_search, "compile_all", compile_all)
    monkeypatch.setattr(runtime_search, "median_ms", median_ms)
    monkeypatch.setattr(op, "plan", lambda *args, config, tma: Plan(config))
    best, results = runtime_search.search(op, (), *shape, torch.float16, True, facts)
    assert default in seen
    if op.rows is not None:
        assert all(c[7] == 1 for c in seen)
    else:
        assert any(c[7] > 1 for c in seen)
    by_config = {r.config: r for r in results}
    assert by_config[default].error is None and by_config[default].ms == 2.0  # timed
    dropped = [r for r in results if r.spills > runtime_search.MAX_SPILLS and r.config != default]
    assert dropped and all(r.error == "100 spilled words" and r.ms == float("inf") for r in dropped)
    timed = [r for r in results if r.error is None]
    assert best is not None and best.ms == min(r.ms for r in timed)
    assert best.spills <= runtime_search.MAX_SPILLS and best.config != default
