"""The `kgen` command: build, --check, show, usage errors, and `python -m kgen`.

Most tests call `kgen.cli.main([...])` in-process (fast); a few run real subprocesses
to prove that `python -m kgen` is the same command and that no traceback reaches stderr.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import kgen
from kgen.build import compile_spec
from kgen.cli import main

ROOT = Path(__file__).resolve().parent.parent

# LANGUAGE.md's smallest spec: `scale` is undeclared (a note at 1:34).
SMALL = "epilogue: bias; sigmoid_residual(scale)\n"
RELU = "gemm: linear(in_features, out_features)\nepilogue: bias; relu\n"
SWISH = (
    "# a user op and a named intermediate\n"
    "param beta: float = 1.702\n"
    "def swish_beta(b) = acc * sigmoid(b * acc)\n"
    "epilogue: bias; z = acc; swish_beta(beta); acc = acc + 0.1 * z\n"
)
UNKNOWN_OP = "epilogue: bias; sigmod\n"  # error at 1:17
UNCLOSED = "gemm: linear(in_features, out_features)\nepilogue: bias; relu(\n"  # error on line 2


def write(directory: Path, filename: str, text: str) -> Path:
    path = directory / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def run(*args: object) -> int:
    """`kgen ARGS` in-process; a usage error (argparse's SystemExit) becomes its code."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


def run_module(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m kgen ARGS` in a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "kgen", *[str(a) for a in args]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def listing(directory: Path) -> list[str]:
    """Every entry of a directory, hidden ones (temporary files) included."""
    return sorted(p.name for p in directory.iterdir())


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


# ---------------------------------------------------------------------------
# build


def test_build_writes_one_module_per_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a = write(tmp_path, "specs/a.fuse", SMALL)
    b = write(tmp_path, "specs/b.fuse", RELU)
    c = write(tmp_path, "specs/scaled.fuse", SWISH)
    out = tmp_path / "out" / "nested"  # created on demand
    assert run("build", a, b, c, "-o", out) == 0
    assert listing(out) == ["a.py", "b.py", "scaled.py"]
    for spec, module in [(a, "a.py"), (b, "b.py"), (c, "scaled.py")]:
        expected = compile_spec(spec.read_text(), spec.name).source
        assert (out / module).read_text(encoding="utf-8") == expected
        compile(expected, module, "exec")  # a real Python module
    stdout = capsys.readouterr().out
    for module in ["a.py", "b.py", "scaled.py"]:
        assert str(out / module) in stdout


def test_build_default_output_dir_is_generated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    write(tmp_path, "k.fuse", RELU)
    monkeypatch.chdir(tmp_path)
    assert run("build", "k.fuse") == 0
    assert listing(tmp_path / "generated") == ["k.py"]


def test_build_is_byte_identical_and_independent_of_path_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    write(tmp_path, "dir/k.fuse", SWISH)
    monkeypatch.chdir(tmp_path)
    assert run("build", "dir/k.fuse", "-o", "out1") == 0
    first = (tmp_path / "out1" / "k.py").read_bytes()
    assert run("build", "dir/k.fuse", "-o", "out1") == 0  # rebuild in place
    assert (tmp_path / "out1" / "k.py").read_bytes() == first
    assert run("build", "./dir/../dir/k.fuse", "-o", "out2") == 0
    assert run("build", tmp_path / "dir" / "k.fuse", "-o", tmp_path / "out3") == 0
    assert (tmp_path / "out2" / "k.py").read_bytes() == first
    assert (tmp_path / "out3" / "k.py").read_bytes() == first
    assert b"\r" not in first


def test_name_statement_sets_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = write(tmp_path, "whatever.fuse", "name: custom_kernel\n" + RELU)
    out = tmp_path / "out"
    assert run("build", spec, "-o", out) == 0
    assert listing(out) == ["custom_kernel.py"]
    assert "def custom_kernel(" in (out / "custom_kernel.py").read_text()


def test_notes_for_undeclared_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    text = (
        "gemm: linear(in_features, out_features)\n"
        "param alpha: float = 1.0\n"
        "epilogue: bias; scale(alpha); add(beta); mul(gamma)\n"
    )
    spec = write(tmp_path, "n.fuse", text)
    assert run("build", spec, "-o", tmp_path / "out") == 0
    err = capsys.readouterr().err
    line = text.splitlines()[2]
    for name in ["beta", "gamma"]:
        col = line.index(f"({name})") + 2
        assert f"{spec}:3:{col}: note: '{name}' is not declared" in err
    assert "'alpha'" not in err  # declared: no note
    assert "error" not in err
    # each note shows the line and a caret under the name
    assert f"    3 | {line}\n" in err
    assert "      | " + " " * (line.index("(beta)") + 1) + "^~~~\n" in err
    # `show` prints the same notes
    assert run("show", spec) == 0
    assert f"{spec}:3:{line.index('(beta)') + 2}: note:" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# build --check


def test_check_passes_when_in_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a = write(tmp_path, "a.fuse", SMALL)
    b = write(tmp_path, "b.fuse", RELU)
    out = tmp_path / "out"
    assert run("build", a, b, "-o", out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run("build", "--check", a, b, "-o", out) == 0
    captured = capsys.readouterr()
    assert "stale" not in captured.err and "error" not in captured.err
    assert snapshot(out) == before


def test_check_names_a_stale_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    a = write(tmp_path, "a.fuse", SMALL)
    b = write(tmp_path, "b.fuse", RELU)
    out = tmp_path / "out"
    assert run("build", a, b, "-o", out) == 0
    stale = out / "b.py"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    before = snapshot(out)
    capsys.readouterr()
    assert run("build", "--check", a, b, "-o", out) == 1
    err = capsys.readouterr().err
    assert str(stale) in err
    assert str(out / "a.py") not in err  # only the stale one is named
    assert snapshot(out) == before


def test_check_names_a_missing_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    a = write(tmp_path, "a.fuse", SMALL)
    b = write(tmp_path, "b.fuse", RELU)
    out = tmp_path / "out"
    assert run("build", a, "-o", out) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert run("build", "--check", a, b, "-o", out) == 1
    err = capsys.readouterr().err
    assert str(out / "b.py") in err
    assert str(out / "a.py") not in err
    assert snapshot(out) == before
    # an output directory that does not exist is not created
    assert run("build", "--check", a, "-o", tmp_path / "nowhere") == 1
    assert not (tmp_path / "nowhere").exists()


def test_check_reports_spec_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = write(tmp_path, "bad.fuse", UNKNOWN_OP)
    assert run("build", "--check", bad, "-o", tmp_path / "out") == 1
    assert f"{bad}:1:17: error: unknown op 'sigmod'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_stale_hint_rebuilds_into_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The command a stale message suggests must bring DIR (not generated/) in sync."""
    write(tmp_path, "a.fuse", RELU)
    monkeypatch.chdir(tmp_path)
    assert run("build", "--check", "a.fuse", "-o", "out") == 1
    suggested = re.search(r"`(kgen [^`]*)`", capsys.readouterr().err)
    assert suggested, "the stale message suggests no command"
    assert run(*shlex.split(suggested.group(1))[1:]) == 0
    assert run("build", "--check", "a.fuse", "-o", "out") == 0


def test_repo_generated_modules_are_in_sync(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """`kgen build --check specs/*.fuse` in the repository: generated/ is up to date."""
    monkeypatch.chdir(ROOT)
    specs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").glob("*.fuse"))
    assert specs
    code = run("build", "--check", *specs)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "stale" not in err
    # and generated/ holds no module that no spec builds
    names = {compile_spec((ROOT / s).read_text(), Path(s).name).kernel.name for s in specs}
    assert {p.stem for p in (ROOT / "generated").glob("*.py")} == names


# ---------------------------------------------------------------------------
# bad specs


def test_bad_specs_among_good_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    good1 = write(tmp_path, "good1.fuse", SMALL)
    bad1 = write(tmp_path, "bad1.fuse", UNKNOWN_OP)
    good2 = write(tmp_path, "good2.fuse", RELU)
    bad2 = write(tmp_path, "bad2.fuse", UNCLOSED)
    out = tmp_path / "out"
    assert run("build", good1, bad1, good2, bad2, "-o", out) == 1
    err = capsys.readouterr().err
    # every bad spec is reported, once, in one run
    assert err.count(": error:") == 2
    assert f"{bad1}:1:17: error: unknown op 'sigmod' (did you mean 'sigmoid'?)" in err
    assert re.search(rf"^{re.escape(str(bad2))}:2:\d+: error: expected ", err, re.M)
    # the good ones are still written, nothing for the bad ones
    assert listing(out) == ["good1.py", "good2.py"]
    assert (out / "good2.py").read_text() == compile_spec(RELU, "good2.fuse").source


def test_error_shows_line_and_caret(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = write(tmp_path, "bad.fuse", "# comment\n" + UNKNOWN_OP)
    assert run("build", bad, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[:3] == [
        f"{bad}:2:17: error: unknown op 'sigmod' (did you mean 'sigmoid'?)",
        "    2 | epilogue: bias; sigmod",
        "      |                 ^~~~~~",
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["name statement", "same stem"])
def test_two_specs_building_the_same_module(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
):
    if how == "name statement":
        first = write(tmp_path, "one.fuse", "name: same\n" + RELU)
        second = write(tmp_path, "two.fuse", "name: same\n" + SMALL)
        module = "same.py"
    else:
        first = write(tmp_path, "a/k.fuse", RELU)
        second = write(tmp_path, "b/k.fuse", SMALL)
        module = "k.py"
    assert run("build", first, second, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "error" in err
    assert module in err
    assert str(first) in err and str(second) in err


def test_error_leaves_existing_module_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "out"
    spec = write(tmp_path, "k.fuse", RELU)
    assert run("build", spec, "-o", out) == 0
    before = snapshot(out)
    write(tmp_path, "k.fuse", "gemm: linear(in_features, out_features)\nepilogue: bias; sigmod\n")
    assert run("build", spec, "-o", out) == 1
    assert snapshot(out) == before
    # a syntax error too
    write(tmp_path, "k.fuse", UNCLOSED)
    assert run("build", spec, "-o", out) == 1
    assert snapshot(out) == before


def test_no_temporary_files_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "out"
    specs = [write(tmp_path, f"s{i}.fuse", text) for i, text in enumerate([SMALL, RELU, SWISH])]
    assert run("build", *specs, "-o", out) == 0
    assert run("build", *specs, "-o", out) == 0  # replacing existing files
    bad = write(tmp_path, "bad.fuse", UNKNOWN_OP)
    assert run("build", *specs, bad, "-o", out) == 1
    assert listing(out) == ["s0.py", "s1.py", "s2.py"]


def test_new_module_has_ordinary_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A generated module is created like any file (0o666 & ~umask), not private (0o600)."""
    spec = write(tmp_path, "k.fuse", RELU)
    old = os.umask(0o022)
    try:
        assert run("build", spec, "-o", tmp_path / "out") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "k.py").stat().st_mode) == 0o644


@pytest.mark.parametrize("stem", ["my-kernel", "import", "x"])
def test_unusable_file_name_hint_is_a_usable_name(
    tmp_path: Path, stem: str, capsys: pytest.CaptureFixture[str]
):
    """For a file stem that cannot be the kernel's name, the hint's `name:` line must work."""
    spec = write(tmp_path, f"{stem}.fuse", RELU)
    out = tmp_path / "out"
    assert run("build", spec, "-o", out) == 1
    err = capsys.readouterr().err
    assert f"{spec}:1:1: error:" in err
    hint = re.search(r"`(name: \w+)`", err)
    assert hint, err
    write(tmp_path, f"{stem}.fuse", hint.group(1) + "\n" + RELU)
    assert run("build", spec, "-o", out) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------
# usage errors (exit 2)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "required"),
        (["frob"], "invalid choice"),
        (["build"], "required"),
        (["build", "{tmp}/missing.fuse"], "missing.fuse"),
        (["build", "{tmp}/spec.txt"], "spec.txt"),
        (["build", "{tmp}/dir.fuse"], "dir.fuse"),  # a directory
        (["show"], "required"),
        (["show", "--ir", "--source", "{tmp}/ok.fuse"], "not allowed"),
        (["build", "--frob", "{tmp}/ok.fuse"], "unrecognized"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    write(tmp_path, "ok.fuse", RELU)
    write(tmp_path, "spec.txt", RELU)
    (tmp_path / "dir.fuse").mkdir()
    assert run(*[a.format(tmp=tmp_path) for a in args]) == 2
    captured = capsys.readouterr()
    assert "usage:" in captured.err
    assert message in captured.err
    assert captured.out == ""


def test_usage_error_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A missing spec is caught before any module is built."""
    ok = write(tmp_path, "ok.fuse", RELU)
    out = tmp_path / "out"
    assert run("build", ok, tmp_path / "missing.fuse", "-o", out) == 2
    assert not out.exists()


# ---------------------------------------------------------------------------
# show


def test_show_ir(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = write(tmp_path, "a.fuse", SMALL)
    assert run("show", "--ir", spec) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "kernel a  # from a.fuse"
    assert (
        lines[1] == "  gemm linear: x[M, in_features] @ weight[out_features, in_features]^T, bias"
    )
    assert lines[2] == "  precision tf32x3; output dtype of x"
    assert "  float  scale: scalar (required), undeclared" in lines
    assert "  init(in_features, out_features, scale)" in lines
    assert any(
        re.match(r"  %\d+ +\[M, N\] += sigmoid_residual %\d+, %\d+ +# 1:17$", x) for x in lines
    )
    assert lines[-1].startswith("  store %")


def test_show_defaults_to_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = write(tmp_path, "a.fuse", SWISH)
    out = tmp_path / "out"
    assert run("show", spec) == 0
    default = capsys.readouterr().out
    assert run("show", "--source", spec) == 0
    assert capsys.readouterr().out == default
    assert run("build", spec, "-o", out) == 0
    assert (out / "a.py").read_text() == default
    assert default == compile_spec(SWISH, "a.fuse").source


def test_show_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = write(tmp_path, "bad.fuse", UNKNOWN_OP)
    for flag in ["--ir", "--source"]:
        assert run("show", flag, bad) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"{bad}:1:17: error: unknown op 'sigmod'" in captured.err


# ---------------------------------------------------------------------------
# file encodings


def test_crlf_spec_builds_the_same_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "lf").mkdir()
    (tmp_path / "crlf").mkdir()
    (tmp_path / "lf" / "k.fuse").write_bytes(SWISH.encode())
    (tmp_path / "crlf" / "k.fuse").write_bytes(SWISH.replace("\n", "\r\n").encode())
    assert run("build", tmp_path / "lf" / "k.fuse", "-o", tmp_path / "out_lf") == 0
    assert run("build", tmp_path / "crlf" / "k.fuse", "-o", tmp_path / "out_crlf") == 0
    module = (tmp_path / "out_crlf" / "k.py").read_bytes()
    assert module == (tmp_path / "out_lf" / "k.py").read_bytes()
    assert b"\r" not in module
    # and a CRLF file with an error points at the same place as the LF one
    (tmp_path / "lf" / "bad.fuse").write_bytes(b"# c\n" + UNKNOWN_OP.encode())
    (tmp_path / "crlf" / "bad.fuse").write_bytes(
        b"# c\r\n" + UNKNOWN_OP.replace("\n", "\r\n").encode()
    )
    capsys.readouterr()
    assert run("build", tmp_path / "lf" / "bad.fuse", "-o", tmp_path / "out_lf") == 1
    lf_err = capsys.readouterr().err
    assert run("build", tmp_path / "crlf" / "bad.fuse", "-o", tmp_path / "out_crlf") == 1
    crlf_err = capsys.readouterr().err
    assert crlf_err.replace(str(tmp_path / "crlf"), str(tmp_path / "lf")) == lf_err
    assert ":2:17: error:" in lf_err


def test_non_utf8_spec_is_an_error_without_traceback(tmp_path: Path):
    (tmp_path / "latin1.fuse").write_bytes("# café\nepilogue: bias\n".encode("latin-1"))
    for args in [["build", "latin1.fuse", "-o", "out"], ["show", "latin1.fuse"]]:
        proc = run_module(*args, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "error" in proc.stderr
        assert "UTF-8" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_non_utf8_error_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    good = write(tmp_path, "good.fuse", RELU)
    bad = tmp_path / "latin1.fuse"
    bad.write_bytes("# café\nepilogue: bias\n".encode("latin-1"))
    assert run("build", good, bad, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert str(bad) in err
    assert str(good) not in err


def test_non_utf8_spec_does_not_stop_the_other_specs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Like any bad spec: the others are still built, and their errors still reported."""
    latin1 = tmp_path / "latin1.fuse"
    latin1.write_bytes("# café\nepilogue: bias\n".encode("latin-1"))
    good = write(tmp_path, "good.fuse", RELU)
    bad = write(tmp_path, "bad.fuse", UNKNOWN_OP)
    out = tmp_path / "out"
    assert run("build", latin1, good, bad, "-o", out) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:17: error:" in err
    assert out.is_dir() and listing(out) == ["good.py"]


# ---------------------------------------------------------------------------
# --version, python -m kgen, no tracebacks


def test_version(capsys: pytest.CaptureFixture[str]):
    assert run("--version") == 0
    assert capsys.readouterr().out == f"kgen {kgen.__version__}\n"


def test_python_m_kgen_builds(tmp_path: Path):
    write(tmp_path, "a.fuse", SMALL)
    write(tmp_path, "b.fuse", RELU)
    proc = run_module("build", "a.fuse", "b.fuse", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert listing(tmp_path / "out") == ["a.py", "b.py"]
    assert (tmp_path / "out" / "a.py").read_text() == compile_spec(SMALL, "a.fuse").source
    assert "a.fuse:1:34: note: 'scale' is not declared" in proc.stderr
    proc = run_module("build", "--check", "a.fuse", "b.fuse", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_module("--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, f"kgen {kgen.__version__}\n")


def test_python_m_kgen_matches_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = write(tmp_path, "a.fuse", SMALL)
    assert run("show", "--ir", spec) == 0
    in_process = capsys.readouterr()
    proc = run_module("show", "--ir", spec, cwd=tmp_path)
    assert proc.returncode == 0
    assert (proc.stdout, proc.stderr) == (in_process.out, in_process.err)


def test_python_m_kgen_bad_specs_and_usage_without_traceback(tmp_path: Path):
    write(tmp_path, "good.fuse", RELU)
    write(tmp_path, "bad1.fuse", UNKNOWN_OP)
    write(tmp_path, "bad2.fuse", UNCLOSED)
    proc = run_module("build", "good.fuse", "bad1.fuse", "bad2.fuse", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "bad1.fuse:1:17: error:" in proc.stderr
    assert re.search(r"^bad2\.fuse:2:\d+: error:", proc.stderr, re.M)
    assert listing(tmp_path / "out") == ["good.py"]
    for args in [[], ["build", "missing.fuse"], ["show", "--ir", "--source", "good.fuse"]]:
        proc = run_module(*args, cwd=tmp_path)
        assert proc.returncode == 2, args
        assert "usage:" in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("obstacle", ["output dir is a file", "module path is a directory"])
def test_unwritable_output_is_an_error_without_traceback(tmp_path: Path, obstacle: str):
    write(tmp_path, "a.fuse", RELU)
    if obstacle == "output dir is a file":
        (tmp_path / "out").write_text("not a directory\n")
    else:
        (tmp_path / "out" / "a.py").mkdir(parents=True)
    for args in [["build", "a.fuse", "-o", "out"], ["build", "--check", "a.fuse", "-o", "out"]]:
        proc = run_module(*args, cwd=tmp_path)
        assert proc.returncode in (1, 2), (args, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "out" in proc.stderr and "error" in proc.stderr
    assert not [p for p in tmp_path.rglob(".*.tmp")]
