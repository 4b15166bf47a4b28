"""The wheel: it ships the grammar as kgen/fuse.lark, and a non-editable install uses it.

Built offline from the source tree (`pip wheel --no-build-isolation`, hatchling from the
venv), then installed with `pip install --target` into a fresh directory and imported
from there by a subprocess that runs outside the repository.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SPEC = "param beta: float = 1.702\nepilogue: bias; silu; scale(beta); add(extra)\n"

# Run by the installed copy, outside the repository.
PROBE = textwrap.dedent("""
    import json, sys
    from importlib import resources

    import kgen
    import kgen.syntax
    from kgen.build import compile_spec

    compiled = compile_spec(open(sys.argv[1], encoding="utf-8").read(), "probe.fuse")
    print(json.dumps({
        "kgen": kgen.__file__,
        "grammar": str(resources.files("kgen").joinpath("fuse.lark")),
        "grammar_text": kgen.syntax.grammar_text(),
        "name": compiled.kernel.name,
        "source": compiled.source,
    }))
    """)


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wheel_ships_grammar_and_works_when_installed(tmp_path: Path):
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling is not installed: cannot build the wheel offline")

    # build
    dist = tmp_path / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT), cwd=tmp_path)
    wheels = list(dist.glob("kgen-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        # the grammar, byte for byte
        assert "kgen/fuse.lark" in names
        assert zf.read("kgen/fuse.lark") == (ROOT / "grammar" / "fuse.lark").read_bytes()
        # every module of the package, and nothing compiled
        modules = {f"kgen/{p.name}" for p in (ROOT / "kgen").glob("*.py")}
        assert {"kgen/__init__.py", "kgen/__main__.py", "kgen/cli.py", "kgen/syntax.py"} <= modules
        assert modules <= names, sorted(modules - names)
        assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
        # the console script
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points) == 1, names
        config = configparser.ConfigParser()
        config.read_string(zf.read(entry_points[0]).decode("utf-8"))
        assert config["console_scripts"]["kgen"].strip() == "kgen.cli:main"

    # install (not editable) and use it from outside the repository
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    assert (site / "kgen" / "fuse.lark").is_file()
    assert not (site / "grammar").exists()  # no fallback to a source checkout's grammar/

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "probe.fuse").write_text(SPEC, encoding="utf-8")
    (elsewhere / "probe.py").write_text(PROBE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "probe.py", "probe.fuse"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert Path(result["kgen"]).resolve().is_relative_to(site.resolve())
    assert Path(result["grammar"]).resolve() == (site / "kgen" / "fuse.lark").resolve()
    assert result["grammar_text"] == (ROOT / "grammar" / "fuse.lark").read_text(encoding="utf-8")
    assert result["name"] == "probe"
    assert "def probe(" in result["source"]

    # the installed command line too: `python -m kgen build` from the installed copy
    proc = subprocess.run(
        [sys.executable, "-m", "kgen", "build", "probe.fuse", "-o", "out"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "out" / "probe.py").read_text(encoding="utf-8") == result["source"]
    assert "probe.fuse:2:40: note: 'extra' is not declared" in proc.stderr
