"""Loading generated modules, and calling them the way users do."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from types import ModuleType

import pytest

from kgen import build
from kgen.build import Compiled, compile_spec, read_spec, write_atomic
from kgen.ir import Kernel

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.fuse"))
GENERATED = ROOT / "generated"

# Tests that run in both tiers: the "cuda" case only in the GPU tier (`pytest -m gpu`).
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]

_counter = itertools.count()


def import_file(path: Path) -> ModuleType:
    """Import a module from a real file, under a name of its own for each import."""
    return build.import_file(path, f"kgen_test_module_{path.stem}_{next(_counter)}")


@functools.cache
def committed(name: str) -> tuple[Compiled, ModuleType]:
    """A spec of specs/ compiled in memory, with its committed module from generated/."""
    path = ROOT / "specs" / f"{name}.fuse"
    compiled = compile_spec(read_spec(path), path.name)
    return compiled, import_file(GENERATED / f"{compiled.kernel.name}.py")


def run(module: ModuleType, kernel: Kernel, config: tuple[int, ...] | None, args, floats):
    """Call the generated function (config None: the module picks its configuration) or
    launch with a given configuration, the way a user's call would."""
    if config is None:
        return getattr(module, kernel.name)(*args, **floats)
    values = [float(floats.get(f.name, f.default)) for f in kernel.floats]
    return module._OP.launch(config, *args, *values)


def build_and_import(
    text: str, directory: Path, filename: str = "spec.fuse"
) -> tuple[Compiled, ModuleType]:
    """Compile spec text, write the module under `directory`, import it."""
    compiled = compile_spec(text, filename)
    path = directory / f"{compiled.kernel.name}_{next(_counter)}.py"
    write_atomic(path, compiled.source)
    return compiled, import_file(path)
