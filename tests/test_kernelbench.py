"""bench/kernelbench.py's specs on the CPU, in Triton's interpreter, at tiny sizes: each
builds, takes the KernelBench Model's weights, and computes what the Model computes
(the same check the GPU run makes before it times anything)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    name = "kgen_bench_kernelbench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "kernelbench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


kb = _script()
PROBLEMS = kb.problems()
# ~0.8 s per problem and dtype in the interpreter: fp32 too in the thorough profile
DTYPES = (
    ("float16", "float32") if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else ("float16",)
)


def test_every_spec_has_its_kernelbench_file() -> None:
    assert len(PROBLEMS) >= 29
    for number, p in PROBLEMS.items():
        assert p.source.name.startswith(f"{number}_")
        assert p.spec.read_text().startswith(f"# KernelBench level2/{p.source.name}")
    assert (kb.REFERENCE / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("number", list(PROBLEMS))
def test_spec_matches_the_kernelbench_model(number: int, tmp_path: Path) -> None:
    problem = PROBLEMS[number]
    built = kb.build([problem], tmp_path)[number]
    built.module = kb.import_module(built.path)
    namespace = kb.load(problem, tiny=True)
    for dtype in DTYPES:
        row = kb.run_case(built, namespace, dtype, "cpu", None, False, "test")
        assert row.error is None, row.error
        assert row.ok, (dtype, row.err_kgen, row.err_eager)
