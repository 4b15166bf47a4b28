"""The shape of what kgen generates: one kernel, one store, the seeds' launch rules,
and specs/ covering the whole language."""

from __future__ import annotations

import ast
import builtins
import re

import pytest
import torch
import triton
from helpers import GENERATED, SPECS, committed
from hypothesis import example, given
from hypothesis import strategies as st

from kgen import configs, ops
from kgen.analyze import RESERVED
from kgen.ir import Gemm, Kind, Role

MODULES = sorted(GENERATED.glob("*.py"))


def _jit_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [
        f
        for f in tree.body
        if isinstance(f, ast.FunctionDef)
        and any(ast.unparse(d) == "triton.jit" for d in f.decorator_list)
    ]


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    return [c for c in ast.walk(node) if isinstance(c, ast.Call) and ast.unparse(c.func) == name]


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_one_kernel_one_store(path) -> None:
    tree = ast.parse(path.read_text())
    jit = _jit_functions(tree)
    kernels = [f for f in jit if f.name.endswith("_kernel")]
    assert [k.name for k in kernels] == [f"{path.stem}_kernel"]
    (kernel,) = kernels
    finish = [f for f in jit if f.name == f"{path.stem}_finish"]
    stores = [ast.unparse(c.args[0]) for c in _calls(kernel, "tl.store")]
    # a training forward (SAVE) also stores the accumulator, before the epilogue
    saves = [s for s in stores if s.startswith("save_ptr + ")]
    assert len(saves) == 1
    stores = [s for s in stores if s not in saves]
    if finish:
        # row operations (kgen/lower/rows.py): one store per path, or, cut for two passes, the
        # statistics and the relative value; the finishing kernel rewrites the output.
        # kgen check's store-count rule holds them to their outputs (tests/test_check.py).
        assert len(stores) <= 3
    else:
        # one store of the output; split-K's partial sums go to the scratch workspace
        partials = [s for s in stores if s.startswith("split_tile + ")]
        assert len(partials) == 1 and len(stores) == 2
        # a training forward's other form (TMA_STORE): the accumulator and the output
        # through tensor descriptors, each in the other branch of its `if`
        described = [ast.unparse(c.func) for c in ast.walk(kernel) if isinstance(c, ast.Call)]
        described = [d for d in described if d.endswith("_desc.store")]
        assert sorted(described) == ["out_desc.store", "save_desc.store"]
    # no store-then-load: the output pointer is never read
    assert all("out_ptr" not in ast.unparse(c) for c in _calls(kernel, "tl.load"))
    backward = [f for f in jit if f.name == f"{path.stem}_backward"]
    for f in backward:
        # dz once, and each operand's gradient (partial sums) once
        targets = [ast.unparse(c.args[0]).split(" ")[0] for c in _calls(f, "tl.store")]
        assert targets.count("_dz_ptr") == 1, targets
        assert all(t == "_dz_ptr" or t.startswith("_grad_") for t in targets), targets
        assert len(set(targets)) == len(targets), targets
    for helper in jit:
        if helper is not kernel and helper not in finish and helper not in backward:
            assert helper.name.startswith("_")
            assert not _calls(helper, "tl.store") and not _calls(helper, "tl.load")


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_every_identifier_is_accounted_for(path) -> None:
    """In the scopes where the spec's names live (the kernel, the launcher, the public
    function, ModelNew), every other name is kgen's: reserved, `_`-prefixed, a stride,
    an epilogue temporary or a builtin -- so the analyzer's reserved list is complete."""
    compiled, _ = committed(path.stem)
    kernel = compiled.kernel
    user = {o.name for o in kernel.operands} | {a.name for a in kernel.init} | {kernel.name}
    user |= {f"{n}_ptr" for n in user} | {f"{kernel.name}_kernel", f"{kernel.name}_finish"}
    tree = ast.parse(path.read_text())
    scopes = [
        n
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        and n.name in (f"{kernel.name}_kernel", f"{kernel.name}_finish", kernel.name, "ModelNew")
    ]
    assert len(scopes) == 3 + any(s.name == f"{kernel.name}_finish" for s in scopes)
    names = set()
    for scope in scopes:
        names |= {n.id for n in ast.walk(scope) if isinstance(n, ast.Name)}
        names |= {a.arg for n in ast.walk(scope) if isinstance(n, ast.arguments) for a in n.args}
    for name in names - user - set(RESERVED) - set(dir(builtins)):
        assert (
            name.startswith("_")
            or re.fullmatch(r"(N?SEG|BN)_\d+", name)  # row-op constexprs, reserved too
            or name.startswith("stride_")
            or name.endswith("_ptr")
            or re.fullmatch(r"[a-z_0-9]+_\d+", name)  # an epilogue temporary
        ), f"{path.name}: identifier {name!r} is neither reserved nor the spec's"


def test_configs_follow_the_seeds_rules() -> None:
    assert all(configs.is_valid(c) for c in configs.CONFIGS.values())
    assert any(c[4] == 4 and c[5] == 2 for c in configs.CONFIGS.values())  # the baseline
    # every loop but the plain "tma" one (the tuner's) has a heuristic choice
    assert {c[6] for c in configs.CONFIGS.values()} == {"pointer", "persistent", "swap"}


@given(
    M=st.integers(1, 20000),
    N=st.integers(1, 20000),
    K=st.integers(1, 20000),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    tma=st.booleans(),
)
@example(M=385, N=3969, K=1985, dtype=torch.float16, tma=True)  # persistent, once split
def test_chosen_config_is_a_candidate(
    M: int, N: int, K: int, dtype: torch.dtype, tma: bool
) -> None:
    chosen = configs.choose_config(M, N, K, dtype, tma)
    assert configs.is_valid(chosen)
    assert tma or chosen[6] == "pointer"
    assert any(
        chosen[:2] == c[:2] and chosen[3:5] == c[3:5] and chosen[6] == c[6] and chosen[2] <= c[2]
        for c in configs.CONFIGS.values()
    )
    # the pipeline fits a Hopper GPU's shared memory, with room for the epilogue
    bm, bn, bk, *_ = chosen
    stage = (bm + bn) * bk * dtype.itemsize
    assert chosen[5] == 2 or chosen[5] * stage <= configs.SMEM_HOPPER - configs.EPILOGUE_SMEM
    if chosen[7] > 1:  # split-K: few tiles, every split 4 k-steps or more
        tiles = triton.cdiv(M, chosen[0]) * triton.cdiv(N, chosen[1])
        assert tiles * chosen[7] <= 132 and triton.cdiv(K, chosen[2]) >= 4 * chosen[7]


@pytest.mark.parametrize("smem", [99 * 1024, 164 * 1024, 227 * 1024])
def test_stages_are_cut_to_the_shared_memory(smem: int) -> None:
    """A GPU with less shared memory than Hopper's gets fewer stages, never fewer than
    two (the configuration must still compile there)."""
    for M, N, K in [(16, 4096, 4096), (256, 4096, 4096), (512, 4096, 4096), (4096,) * 3]:
        for dtype in (torch.float16, torch.float32):
            hopper = configs._heuristic(M, N, K, dtype, True, 132)
            small = configs._heuristic(M, N, K, dtype, True, 132, smem)
            assert small[:5] == hopper[:5] and small[6:] == hopper[6:]
            stage = (small[0] + small[1]) * small[2] * dtype.itemsize
            assert small[5] <= hopper[5]
            assert small[5] == 2 or small[5] * stage <= smem - configs.EPILOGUE_SMEM


def test_specs_cover_the_language() -> None:
    used_ops: set[str] = set()
    roles: set[tuple[Role, Kind]] = set()
    forms, texts = set(), ""
    for path in SPECS:
        compiled, _ = committed(path.stem)
        kernel = compiled.kernel
        used_ops |= {i.op for i in kernel.body}
        roles |= {(o.role, o.kind) for o in kernel.operands}
        forms.add((kernel.gemm, kernel.has_bias))
        texts += compiled.kernel.source
    aliases = {a for a in ops.ALIASES if re.search(rf"\b{a}\(|\b{a}\b", texts)}
    assert {n for n in ops.public_names() if n not in ops.ALIASES} <= used_ops | {"where"}
    assert "where(" in texts and aliases == set(ops.ALIASES)
    assert {Gemm.LINEAR, Gemm.MATMUL} == {f for f, _ in forms}
    assert (Gemm.LINEAR, False) in forms
    assert {
        (Role.FLOAT, Kind.SCALAR),
        (Role.VECTOR, Kind.COL),
        (Role.SCALAR, Kind.SCALAR),
        (Role.INPUT, Kind.TILE),
        (Role.INPUT, Kind.COL),
        (Role.INPUT, Kind.ROW),
    } <= roles
    for statement in ("def ", "init:", "output:", "precision:", "name:", " = acc"):
        assert statement in texts, statement
    assert {"tf32x3", "bf16x3", "ieee", "tf32"} <= {
        committed(p.stem)[0].kernel.precision for p in SPECS
    }
    assert any(o.implicit for p in SPECS for o in committed(p.stem)[0].kernel.operands)


def _kgen_imports() -> dict[str, set[str]]:
    """kgen's modules and the kgen modules each imports, at module level or inside a
    function (a package counts as importing what its `__init__` imports).

    Importing a.b.c runs a and a.b first; a module inside a.b, though, runs only once
    a.b has started, so importing a.b's other modules (`from a.b.c import f`) needs
    nothing more of a.b there, and is no edge to it. Importing a.b itself, or a name
    it defines (`from a.b import g`), is one."""
    package = GENERATED.parent / "kgen"
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # importing a.b.c runs a and a.b first
                pieces = target.split(".")
                for i in range(1, len(pieces) + 1):
                    prefix = ".".join(pieces[:i])
                    started = name.startswith(f"{prefix}.") and prefix != target
                    if prefix in modules and prefix != name and not started:
                        edges[name].add(prefix)
    return edges


def test_kgen_has_no_import_cycle() -> None:
    """Data flows one way: no module of kgen imports, even inside a function, one that
    (directly or not) imports it back."""
    edges = _kgen_imports()
    assert "kgen.lower.module" in edges and "kgen.runtime.op" in edges
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("package", ["kgen.analyze", "kgen.lower", "kgen.runtime"])
def test_a_package_lists_its_modules_in_import_order(package: str) -> None:
    """A package's docstring lists its modules, each importing only those above it."""
    init = GENERATED.parent.joinpath(*package.split("."), "__init__.py")
    listed = re.findall(r"^    (\w+)  ", ast.get_docstring(ast.parse(init.read_text())) or "", re.M)
    modules = {p.stem for p in init.parent.glob("*.py")} - {"__init__"}
    assert sorted(listed) == sorted(modules)
    edges = _kgen_imports()
    for i, module in enumerate(listed):
        imported = {m for m in listed if f"{package}.{m}" in edges[f"{package}.{module}"]}
        assert imported <= set(listed[:i]), f"{module} imports {imported - set(listed[:i])}"
    if package == "kgen.analyze":  # the passes import one another (not only the package)
        assert "kgen.analyze.declarations" in edges["kgen.analyze.elaborate"]


def test_the_runtime_needs_nothing_of_the_compiler() -> None:
    """kgen.runtime (what generated modules import) reaches no compiler module, so a
    module runs where lark and black are not installed."""
    edges = _kgen_imports()
    reached, stack = set(), ["kgen.runtime.op"]
    while stack:
        name = stack.pop()
        if name not in reached:
            reached.add(name)
            stack.extend(edges[name])
    assert reached <= {"kgen", "kgen.configs"} | {n for n in edges if n.startswith("kgen.runtime")}
