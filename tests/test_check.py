"""`kgen check`: each rule catches a planted violation at the right line; clean modules,
every generated module and the seeds' kernels pass; the command's exit codes.

A planted module is CLEAN with one edit; the line the finding must name carries
`# HERE`. The modules only have to parse: nothing here imports or runs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kgen.check import RULES, Finding, check_files, check_source
from kgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
GENERATED = sorted((ROOT / "generated").glob("*.py"))
DATA = Path(__file__).resolve().parent / "data"
SEEDS = [DATA / "seed_001_kernel.py", DATA / "seed_003_kernel.py"]

CLEAN = """\
import torch
import triton
import triton.language as tl

BLOCK = 64


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _write(ptrs, value, mask):
    tl.store(ptrs, value, mask=mask)


@triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4),
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 128}, num_warps=4),
    ],
    key=["M", "N"],
)
@triton.jit
def scale_kernel(x_ptr, out_ptr, M, N, stride_m, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs = offs_m[:, None] * stride_m + offs_n[None, :]
    x_ptrs = x_ptr + offs
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, 4):
        acc += tl.load(x_ptrs, mask=mask, other=0.0)
        x_ptrs += stride_m
    if M > 1:
        acc = _sigmoid(acc)
    tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit
def rows_kernel(x_ptr, y_ptr, n, BLOCK_SIZE: tl.constexpr = 128):
    offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + offs, mask=offs < n)
    _write(y_ptr + offs, x * 2, offs < n)


def scale(x):
    M, N = x.shape
    out = torch.empty_like(x)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    scale_kernel[grid](x, out, M, N, x.stride(0))
    return out


def rows(x):
    n = x.numel()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    if n == 0:
        return y
    rows_kernel[(max(1, n // BLOCK), 1)](x, y, n, BLOCK_SIZE=BLOCK)
    rows_kernel[(n,)](x, y, n)
    return y
"""


def plant(old: str, new: str, text: str = CLEAN) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def here(text: str) -> int:
    """The line that carries `# HERE`."""
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if "# HERE" in t]
    return line


def found(text: str) -> list[tuple[int, str]]:
    return [(f.line, f.rule) for f in check_source("m.py", text)]


def test_the_clean_module_has_no_findings():
    assert check_source("m.py", CLEAN) == []


def test_rule_ids_are_stable():
    ids = [rule for rule, _ in RULES]
    assert ids == ["jit", "store-count", "store-then-load", "pow2-block", "loop-exit", "zero-grid"]


# ---------------------------------------------------------------------------
# one planted violation per case: rule, then (old, new) edits; `# HERE` marks the line

KERNEL_DEF = "def scale_kernel(x_ptr, out_ptr, M, N, stride_m, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):\n"
STORE = "    tl.store(out_ptr + offs, acc, mask=mask)\n"
LAUNCH = "    rows_kernel[(max(1, n // BLOCK), 1)](x, y, n, BLOCK_SIZE=BLOCK)\n"
SECOND = "    rows_kernel[(n,)](x, y, n)\n"
CONFIG = '        triton.Config({"BLOCK_M": 16, "BLOCK_N": 128}, num_warps=4),\n'
MARK = "  # HERE\n"

PLANTED: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "jit: launched kernel without @triton.jit (under autotune)": (
        "jit",
        [("@triton.jit\n" + KERNEL_DEF, KERNEL_DEF[:-1] + MARK)],
    ),
    "jit: helper called from a kernel without @triton.jit": (
        "jit",
        [("@triton.jit\ndef _sigmoid(x):\n", "def _sigmoid(x):" + MARK)],
    ),
    "jit: host function calling tl.load": (
        "jit",
        [("def scale(x):\n", "def peek(p):" + MARK + "    return tl.load(p)\n\n\ndef scale(x):\n")],
    ),
    "jit: @triton.jit above @triton.autotune": (
        "jit",
        [
            ("@triton.autotune(\n    configs=[", "@triton.jit\n@triton.autotune(\n    configs=["),
            ("@triton.jit\n" + KERNEL_DEF, KERNEL_DEF[:-1] + MARK),
        ],
    ),
    "store-count: an intermediate store": (
        "store-count",
        [
            (KERNEL_DEF, KERNEL_DEF[:-1] + MARK),
            ("        acc = _sigmoid(acc)\n", "        tl.store(x_ptr + offs, acc, mask=mask)\n"),
        ],
    ),
    "store-count: no store": ("store-count", [(KERNEL_DEF, KERNEL_DEF[:-1] + MARK), (STORE, "")]),
    "store-then-load: load from the output after storing it": (
        "store-then-load",
        [(STORE, STORE + "    acc = tl.load(out_ptr + offs, mask=mask)" + MARK)],
    ),
    "store-then-load: through a local pointer variable": (
        "store-then-load",
        [
            (
                STORE,
                "    out_ptrs = out_ptr + offs\n"
                "    tl.store(out_ptrs, acc, mask=mask)\n"
                "    acc += tl.load(out_ptrs + N, mask=mask)" + MARK,
            )
        ],
    ),
    "store-then-load: after a jit helper stored it": (
        "store-then-load",
        [
            (
                "    _write(y_ptr + offs, x * 2, offs < n)\n",
                "    _write(y_ptr + offs, x * 2, offs < n)\n    z = tl.load(y_ptr)" + MARK,
            )
        ],
    ),
    "pow2-block: triton.Config value": (
        "pow2-block",
        [(CONFIG, CONFIG.replace("128", "96")[:-1] + MARK)],
    ),
    "pow2-block: constexpr default": (
        "pow2-block",
        [("BLOCK_SIZE: tl.constexpr = 128):\n", "BLOCK_SIZE: tl.constexpr = 100):" + MARK)],
    ),
    "pow2-block: launch keyword": (
        "pow2-block",
        [(SECOND, SECOND.replace("n)", "n, BLOCK_SIZE=48)")[:-1] + MARK)],
    ),
    "pow2-block: launch keyword through a local name": (
        "pow2-block",
        [(SECOND, "    bs = 200\n    rows_kernel[(n,)](x, y, n,\n    BLOCK_SIZE=bs)" + MARK)],
    ),
    "pow2-block: module constant": ("pow2-block", [("BLOCK = 64\n", "BLOCK = 60" + MARK)]),
    "loop-exit: break": (
        "loop-exit",
        [
            (
                "        x_ptrs += stride_m\n",
                "        x_ptrs += stride_m\n        if k > 2:\n            break" + MARK,
            )
        ],
    ),
    "loop-exit: continue": (
        "loop-exit",
        [
            (
                "    for k in range(0, 4):\n",
                "    for k in range(0, 4):\n        if k == 1:\n            continue" + MARK,
            )
        ],
    ),
    "loop-exit: return in a helper's while loop": (
        "loop-exit",
        [
            (
                "    return 1.0 / (1.0",
                "    while x > 0:\n        return x" + MARK + "    return 1.0 / (1.0",
            )
        ],
    ),
    "zero-grid: floor division": (
        "zero-grid",
        [(LAUNCH, LAUNCH.replace("max(1, n // BLOCK)", "n // BLOCK")[:-1] + MARK)],
    ),
    "zero-grid: int(a / b) through a grid variable": (
        "zero-grid",
        [(SECOND, "    g = (int(n / 128),)" + MARK + "    rows_kernel[g](x, y, n)\n")],
    ),
    "zero-grid: a shape in the lambda": (
        "zero-grid",
        [('triton.cdiv(N, meta["BLOCK_N"]))\n', "x.shape[1])" + MARK)],
    ),
    "zero-grid: a size without an early return": (
        "zero-grid",
        [("    if n == 0:\n        return y\n", ""), (SECOND, SECOND[:-1] + MARK)],
    ),
    "zero-grid: literal 0": ("zero-grid", [(LAUNCH, LAUNCH.replace("1)]", "0)]")[:-1] + MARK)]),
    "zero-grid: a grid from outside": (
        "zero-grid",
        [
            ("def rows(x):\n", "def rows(x, grid):\n"),
            (SECOND, "    rows_kernel[grid](x, y, n)" + MARK),
        ],
    ),
}


@pytest.mark.parametrize("case", PLANTED)
def test_planted_violation_is_caught_at_its_line(case: str):
    rule, edits = PLANTED[case]
    text = CLEAN
    for old, new in edits:
        text = plant(old, new, text)
    assert found(text) == [(here(text), rule)]


def test_store_count_messages():
    text = plant(STORE, "")
    (f,) = check_source("m.py", text)
    assert f.message.startswith("kernel `scale_kernel` has no tl.store but has 1 output (`out`: ")
    text = plant("        acc = _sigmoid(acc)\n", "        tl.store(x_ptr + offs, acc)" + MARK)
    (f,) = check_source("m.py", text)
    lines = f"{here(text)}, {here(text) + 1}"
    assert f"`scale_kernel` has 2 tl.store calls (lines {lines}) but has 1 output" in f.message


def test_store_count_accepts_one_store_per_output():
    two = plant(STORE, STORE + "    tl.store(x_ptr + offs, acc, mask=mask)\n")
    assert [r for _, r in found(two)] == ["store-count"]  # x is an input: 1 output
    two = plant("    return out\n", "    return out, x\n", two)
    two = plant("    out = torch.empty_like(x)\n", "    x, out = x.new_empty(x.shape), x\n", two)
    assert [r for _, r in found(two)] == ["store-count"]  # `out` is now an input
    two = plant(
        "    x, out = x.new_empty(x.shape), x\n",
        "    x, out = x.new_empty(x.shape), x.new_zeros(2)\n",
        two,
    )
    assert found(two) == []


def test_store_count_takes_the_larger_branch_and_counts_helpers():
    text = plant(
        "    tl.store(out_ptr + offs, acc, mask=mask)\n",
        "    if M > 2:\n        tl.store(out_ptr + offs, acc, mask=mask)\n"
        "    else:\n        _write(out_ptr + offs, acc, mask)\n",
    )
    assert found(text) == []
    text = plant(
        "    _write(y_ptr + offs, x * 2, offs < n)\n",
        "    _write(y_ptr + offs, x * 2, offs < n)\n    _write(y_ptr, x, offs < n)\n",
    )
    line = text.splitlines().index(
        "def rows_kernel(x_ptr, y_ptr, n, BLOCK_SIZE: tl.constexpr = 128):"
    )
    (f,) = check_source("m.py", text)
    assert (f.line, f.rule) == (line + 1, "store-count")
    assert "2 tl.store calls" in f.message and "`y`" in f.message


def test_store_count_assumes_one_output_without_a_launch():
    text = (
        "import triton\nimport triton.language as tl\n\n\n@triton.jit\n"
        "def k(a_ptr, b_ptr):  # HERE\n"
        "    x = tl.load(a_ptr)\n    tl.store(b_ptr, x)\n    tl.store(b_ptr + 1, x)\n"
    )
    (f,) = check_source("m.py", text)
    assert (f.line, f.rule) == (here(text), "store-count")
    assert "is assumed to have 1 output" in f.message


MODES = """\
import torch
import triton
import triton.language as tl


@triton.jit
def k(x_ptr, out_ptr, stats_ptr, n, SPLIT: tl.constexpr):
    offs = tl.arange(0, 16)
    x = tl.load(x_ptr + offs)
    if SPLIT:
        tl.store(stats_ptr + offs, x)
    else:
        tl.store(out_ptr + offs, x)


def f(x, split):
    out = torch.empty_like(x)
    stats = torch.empty_like(x)
    k[(1,)](x, out, stats, 16, SPLIT=split)
    return out, stats
"""


def test_store_count_lets_modes_store_different_outputs():
    assert found(MODES) == []  # each mode stores one of the two outputs once
    stats = "        tl.store(stats_ptr + offs, x)\n"
    text = plant(stats, "        tl.store(out_ptr + 16 + offs, x)\n", MODES)
    (f,) = check_source("m.py", text)
    assert f.rule == "store-count"
    assert "never stores output `stats` (its parameter `stats_ptr`) on any path" in f.message
    text = plant(stats, stats + "        tl.store(stats_ptr + 16 + offs, x)\n", MODES)
    (f,) = check_source("m.py", text)
    assert f.rule == "store-count" and "stores to `stats_ptr` twice on one path" in f.message


SPLIT_K = """\
import torch
import triton
import triton.language as tl


@triton.jit
def k(x_ptr, out_ptr, partials_ptr, counts_ptr, SPLIT_K: tl.constexpr):
    offs = tl.arange(0, 16)
    part = tl.load(x_ptr + tl.program_id(1) * 16 + offs)
    tl.store(partials_ptr + tl.program_id(1) * 16 + offs, part)
    tl.debug_barrier()
    arrived = tl.atomic_add(counts_ptr, 1, sem="acq_rel")
    if arrived == SPLIT_K - 1:
        total = tl.zeros([16], dtype=tl.float32)
        for s in tl.static_range(SPLIT_K):
            total += tl.load(partials_ptr + s * 16 + offs)
        tl.store(out_ptr + offs, total)


def f(x, counts):
    out = torch.empty(16, device=x.device)
    partials = torch.empty(64, device=x.device)
    k[(1, 4)](x, out, partials, counts, SPLIT_K=4)
    return out
"""


def test_split_k_hand_off_is_no_finding():
    """Partial sums stored to a scratch buffer (allocated, never read after the launch)
    are not an output's store, and reading them back after an acquiring atomic is the
    hand-off, not a reload: no finding. Without the atomic's `sem` the reload is a
    finding, and a second store to the output still is one."""
    assert found(SPLIT_K) == []
    text = plant(', sem="acq_rel")', ")", SPLIT_K)
    assert [rule for _, rule in found(text)] == ["store-then-load"]
    old = "    tl.debug_barrier()\n"
    text = plant(old, "    tl.store(out_ptr + offs, part)\n" + old, SPLIT_K)
    assert [rule for _, rule in found(text)] == ["store-count"]


DESCRIPTORS = """\
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def copy_kernel(x_desc, y_desc, BLOCK: tl.constexpr):
    tile = x_desc.load([tl.program_id(0) * BLOCK, 0])
    y_desc.store([tl.program_id(0) * BLOCK, 0], tile)


def copy(x):
    y = torch.empty_like(x)
    x_desc = TensorDescriptor.from_tensor(x, [64, 64])
    y_desc = TensorDescriptor.from_tensor(y, [64, 64])
    copy_kernel[(triton.cdiv(x.shape[0], 64),)](x_desc, y_desc, BLOCK=64)
    return y
"""


def test_tensor_descriptor_loads_and_stores():
    assert found(DESCRIPTORS) == []  # y, through y_desc, is the one output
    old = "    y_desc.store([tl.program_id(0) * BLOCK, 0], tile)\n"
    text = plant(old, old + "    again = y_desc.load([0, 0])  # HERE\n", DESCRIPTORS)
    assert found(text) == [(here(text), "store-then-load")]
    text = plant(old, old + "    tl.store_tensor_descriptor(y_desc, [0, 0], tile)\n", DESCRIPTORS)
    text = plant("def copy_kernel(", "def copy_kernel(  # HERE\n", text)
    assert found(text) == [(here(text), "store-count")]


def test_grid_function_sees_the_launchers_names():
    grid = (
        "    tiles = triton.cdiv(n, 64)\n\n    def grid(meta):\n"
        "        return (tiles, 1)\n\n    rows_kernel[grid](x, y, n)\n"
    )
    assert found(plant(SECOND, grid)) == []
    text = plant(SECOND, grid.replace("triton.cdiv(n, 64)", "n // 64").replace("1)", "1)  # HERE"))
    (f,) = check_source("m.py", text)
    assert (f.line, f.rule) == (here(text), "zero-grid")
    assert "grid entry `tiles` (through `n // 64`, line" in f.message


def test_load_before_store_and_other_branch_are_fine():
    text = plant(
        "    tl.store(out_ptr + offs, acc, mask=mask)\n",
        "    acc += tl.load(out_ptr + offs, mask=mask)\n"
        "    if M > 3:\n        tl.store(out_ptr + offs, acc, mask=mask)\n"
        "    else:\n        acc = tl.load(out_ptr + offs + N, mask=mask)\n"
        "        tl.store(out_ptr + offs, acc, mask=mask)\n",
    )
    assert found(text) == []
    # the same buffer read in the same statement that writes it: read first
    text = plant(
        "    tl.store(out_ptr + offs, acc, mask=mask)\n",
        "    tl.store(out_ptr + offs, tl.load(out_ptr + offs) + acc, mask=mask)\n",
    )
    assert found(text) == []


def test_zero_grid_accepts_cdiv_max_and_guarded_names():
    for grid in [
        "(triton.cdiv(n, 64) * 2, 1)",
        "(max(n // 64, 1),)",
        "(min(4, triton.cdiv(n, 8)),)",
        "(int(triton.cdiv(n, 8)), 3)",
    ]:
        text = plant("rows_kernel[(max(1, n // BLOCK), 1)]", f"rows_kernel[{grid}]")
        assert found(text) == [], grid


def test_zero_grid_follows_module_functions():
    text = plant(
        "def rows(x):\n",
        "def _sms(device):\n    props = torch.cuda.get_device_properties(device)\n"
        "    info = (props.name, props.multi_processor_count)\n    return info\n\n\n"
        "def _rows(device):\n    return device.index\n\n\ndef rows(x):\n",
    )
    ok = plant(
        "rows_kernel[(n,)]", "rows_kernel[(min(triton.cdiv(n, 8), _sms(x.device)[1]),)]", text
    )
    assert found(ok) == []
    bad = plant(
        "rows_kernel[(n,)]", "rows_kernel[(min(triton.cdiv(n, 8), _rows(x.device)),)]", text
    )
    (f,) = check_source("m.py", bad)
    assert f.rule == "zero-grid" and "_rows(x.device)" in f.message


def test_findings_are_sorted_and_formatted():
    text = plant("BLOCK = 64\n", "BLOCK = 60\n")
    text = plant("rows_kernel[(max(1, n // BLOCK), 1)]", "rows_kernel[(n // BLOCK, 1)]", text)
    findings = check_source("pkg/m.py", text)
    assert [f.rule for f in findings] == ["pow2-block", "zero-grid"]
    assert findings == sorted(findings)
    assert (
        str(findings[0])
        == "pkg/m.py:5: pow2-block: block size BLOCK = 60 (module constant) is not a power of two"
    )


def test_syntax_errors_and_unreadable_files_are_findings(tmp_path: Path):
    assert check_source("bad.py", "import triton\ndef f(:\n") == [
        Finding("bad.py", 2, "syntax", "invalid syntax")
    ]
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"x = '\xe9'\n")
    (f,) = check_files([latin])
    assert (f.line, f.rule) == (1, "read")


# ---------------------------------------------------------------------------
# real modules


@pytest.mark.parametrize("module", GENERATED, ids=lambda p: p.name)
def test_generated_modules_are_clean(module: Path):
    assert check_files([module]) == []


def test_seed_kernels_are_clean():
    # Both seeds' kernels follow every rule their prompts state.
    assert check_files(SEEDS) == []


def test_planted_violations_in_a_seed_kernel_are_caught():
    text = SEEDS[0].read_text()
    old = "            triton.cdiv(M, meta['BLOCK_M']),\n"
    text = plant(old, "            M // meta['BLOCK_M'],  # HERE\n", text)
    assert found(text) == [(here(text), "zero-grid")]

    text = SEEDS[1].read_text()
    old = "        triton.Config({'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 32}, num_stages=3, num_warps=8),\n"
    text = plant(old, old.replace("32}", "24}")[:-1] + "  # HERE\n", text)
    old = "@triton.jit\ndef fused_gemm_scale_hardtanh_gelu_kernel(\n"
    text = plant(old, "def fused_gemm_scale_hardtanh_gelu_kernel(  # HERE\n", text)
    old = "    tl.store(out_ptrs, acc, mask=mask_out)\n"
    new = old + "    acc = tl.load(out_ptrs, mask=mask_out)  # HERE\n"
    text = plant(old, new, text)
    lines = [i for i, t in enumerate(text.splitlines(), 1) if "# HERE" in t]
    rules = ["pow2-block", "jit", "store-then-load"]
    assert found(text) == list(zip(lines, rules, strict=True))


# ---------------------------------------------------------------------------
# the command


def run(*args: object) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


def test_cli_clean_findings_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run("check", *GENERATED) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"{len(GENERATED)} files checked, no findings" in err

    bad = tmp_path / "bad.py"
    bad.write_text(plant("rows_kernel[(max(1, n // BLOCK), 1)]", "rows_kernel[(n // BLOCK, 1)]"))
    line = (
        bad.read_text()
        .splitlines()
        .index("    rows_kernel[(n // BLOCK, 1)](x, y, n, BLOCK_SIZE=BLOCK)")
        + 1
    )
    assert run("check", GENERATED[0], bad) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{bad}:{line}: zero-grid: grid entry `n // BLOCK` of `rows_kernel`")
    assert out.count("\n") == 1 and "1 finding in 1 of them" in err

    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    assert run("check", broken) == 1
    assert capsys.readouterr().out == f"{broken}:1: syntax: invalid syntax\n"

    assert run("check") == 2
    assert run("check", tmp_path / "missing.py") == 2
    assert run("check", tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err


def test_python_m_kgen_check_never_tracebacks(tmp_path: Path):
    (tmp_path / "latin.py").write_bytes(b"x = '\xe9'\n")
    (tmp_path / "nul.py").write_bytes(b"x = 1\0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kgen", "check", "latin.py", "nul.py", *map(str, SEEDS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[0].startswith("latin.py:1: read: not UTF-8")
    assert proc.stdout.splitlines()[1].startswith("nul.py:1: syntax:")


def test_deeply_nested_source_is_a_finding_not_a_traceback(tmp_path) -> None:
    for text in ("x = " + " + ".join(["1"] * 3000) + "\n", "x = " + "-" * 100_000 + "1\n"):
        findings = check_source("deep.py", text)
        assert [(f.line, f.rule) for f in findings] == [(1, "syntax")], findings
