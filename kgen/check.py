"""`kgen check`: a static verifier for Triton modules, ours or hand- or model-written.

It reads a module with the stdlib `ast` (nothing is imported or run) and reports
`FILE:LINE: rule: message` findings. The rules are heuristics over the source text;
each says what it catches and what it does not.

Terms. A *launch* is `name[grid](...)` where `name` is a module-level function. A
*jit function* is decorated with `triton.jit` (under any import alias, possibly below
`triton.autotune`/`triton.heuristics`); a launched function missing the decorator is
treated as one too, so the other rules still look inside it. A *kernel* is a jit
function that is launched, or that no other jit function calls and that uses
`tl.program_id`/`tl.load`/`tl.store`; other jit functions are *helpers*. Names are
followed to their last assignment before the use (textually: `if` branches are not
merged), in the function and then at module level.

Rules (ids are stable):

- `jit`: not `@triton.jit` but launched, or called from a jit function (a module-level
  function with no triton decorator), or calling device-only `tl.*` ops (load, store,
  program_id, dot, atomics, ...); and a `@triton.jit` that is not the innermost
  decorator. Reported at the `def` line. Not caught: kernels launched through an
  attribute or a variable (`self.k[grid]`), helpers imported from other modules.
- `store-count`: one final store per output. Outputs: the launch arguments that the
  launching function allocates (torch.empty/_like, zeros, ones, full, `t.new_*`;
  directly or through `TensorDescriptor(...)`) and reads after the launch (returns,
  saves for backward, passes on; a scratch or lock buffer that is not read again is no
  output, and a store that writes only such a buffer, as a split-K partial sum does, is
  not counted); 1 if no launch shows one. A kgen module launches through its runtime,
  not in its own text: its declaration `GemmOp(name, kernel, ..., rows=Rows(...,
  finish=...))` (kgen.runtime) stands for the launches, with the outputs the runtime
  gives them (`out_ptr`, `save_ptr` -- the accumulator a training call saves -- and
  the backward kernel's `_dz_ptr` and `_grad_*_ptr`; and `stats_ptr`, read by the
  finishing kernel, for a kernel with row operations) and its scratch (`split_partials_ptr`, `split_counts_ptr`).
  Stores are followed textually along every path: a
  store in a loop counts once, an `if`/`else` forks the path, a jit helper's stores
  count at each call. A finding: the path with the most stores has more than there are
  outputs, or no store at all; a path stores to one pointer parameter twice; an output
  is stored on no path (checked where every store's pointer parameter is known). So a
  kernel with modes may store different outputs per mode (`if SPLIT: stats else: out`).
  `tl.store`, `tl.store_tensor_descriptor` and `desc.store(...)` (desc from
  `tl.make_tensor_descriptor`, or a parameter named `*desc*`) count; atomics do not.
  Reported at the kernel's `def`.
- `store-then-load`: a load in a jit function whose pointer derives from the same base
  pointer parameter as an earlier store there (directly, or inside a jit helper it
  calls with that pointer). Bases are followed through local assignments, `+`/`-`,
  indexing, `tl.make_block_ptr`/`tl.advance`/`tl.multiple_of`/`tl.max_contiguous`;
  integer-valued parameters (in `*`, `//`, `%`, comparisons, `range`, `tl.cdiv`) are
  never bases. Statement order: a statement's loads come before its stores, `if` and
  `else` are separate paths, and loop-carried reuse (a load at the top of a loop body
  after a store at its bottom) is not caught. An atomic with `sem="acquire"` or
  `"acq_rel"` between the store and the load is a hand-off between programs (a split-K
  tile's last program reads the partial sums the others published): no finding.
  Reported at the load.
- `pow2-block`: a literal block size that is not a power of two: the default of a
  `BLOCK*: tl.constexpr` parameter, a `BLOCK*` key in `triton.Config({...})`, a
  `BLOCK*=` launch keyword (a literal, or a name bound to one), or a module-level
  `BLOCK* = n`. Names: BLOCK, BLOCK_*, and Inductor's XBLOCK/R0_BLOCK style. Values
  computed at run time (`triton.next_power_of_2(n)`, config tables) are not checked.
- `loop-exit`: `break`, `continue` or `return` inside a `for`/`while` of a jit function
  (Triton compiles none of them; use a mask or the loop bound).
- `zero-grid`: a launch grid entry not provably >= 1. Accepted: int literals >= 1,
  `triton.cdiv(...)`, `max(...)` with an accepted argument, `min`/`*`/`+`/`int(...)`
  of accepted values, a device's `.multi_processor_count`, names bound to accepted
  values, element `[i]` of a tuple and calls of module-level (non-jit) functions whose
  every `return` is accepted, and a lambda or `def grid(meta)` returning them. A bare
  name (`(M,)`) is accepted when the launching function first returns or raises under
  `if M == 0` / `M <= 0` / `M < 1` / `not M`. Everything else, e.g. `M // B`,
  `int(M / B)`, `x.shape[0]`, a grid passed in from outside, is a finding at the grid
  entry, naming the offending part. `triton.cdiv(0, B)` is 0 and is accepted: Triton's
  launcher skips a launch whose grid is empty, and cdiv is the form the rule asks for.

Files that do not parse give one `syntax` finding; files that cannot be read, `read`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


# -- names ----------------------------------------------------------------------------

TL = "triton.language"
JIT = {"triton.jit", "triton.runtime.jit", "triton.runtime.jit.jit"}
WRAPPERS = {"triton.autotune", "triton.heuristics", "triton.runtime.autotune"}
CDIV = {"triton.cdiv", f"{TL}.cdiv"}
CONFIG = {"triton.Config", "triton.runtime.Config"}
DEVICE_OPS = {
    f"{TL}.{op}"
    for op in (
        *("load", "store", "program_id", "num_programs", "arange", "dot", "debug_barrier"),
        *("make_block_ptr", "advance", "make_tensor_descriptor"),
        *("load_tensor_descriptor", "store_tensor_descriptor"),
        *("atomic_add", "atomic_and", "atomic_cas", "atomic_max", "atomic_min"),
        *("atomic_or", "atomic_xchg", "atomic_xor"),
    )
}
ALLOC = {
    f"torch.{fn}"
    for fn in (
        *("empty", "empty_like", "empty_strided", "zeros", "zeros_like"),
        *("ones", "ones_like", "full", "full_like"),
    )
}
ALLOC_METHODS = {"new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full"}
DESCRIPTORS = {f"{TL}.make_tensor_descriptor", f"{TL}._experimental_make_tensor_descriptor"}
POINTER_KEYWORDS = {
    "pointer",
    "desc",
}  # tl.store(pointer=...), tl.store_tensor_descriptor(desc=...)
POINTER_PASS = {  # calls whose result points into their first argument's buffer
    f"{TL}.{fn}"
    for fn in ("advance", "multiple_of", "max_contiguous", "max_constancy", "make_block_ptr")
} | DESCRIPTORS
BLOCK_NAME = re.compile(r"(?:[XYZR]\d*_?)?BLOCK(?:_[A-Z0-9_]*)?")

Scope = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef
Function = ast.FunctionDef | ast.AsyncFunctionDef
Problem = tuple[int, str]  # (line, message)


def _src(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _walk_local(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node under `nodes`, not descending into nested functions, lambdas or classes."""
    stack = list(nodes)[::-1]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


# -- the module model the rules share -------------------------------------------------


@dataclass
class Launch:
    call: ast.Call  # kernel[grid](...)
    kernel: str
    scope: Scope  # the function (or module) that launches

    @property
    def grid(self) -> ast.expr:
        assert isinstance(self.call.func, ast.Subscript)
        return self.call.func.slice


@dataclass
class Module:
    tree: ast.Module
    aliases: dict[str, str] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)  # module level
    launches: list[Launch] = field(default_factory=list)
    parents: dict[ast.AST, Scope] = field(default_factory=dict)  # function -> enclosing scope
    effects: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # see _effects

    @classmethod
    def parse(cls, tree: ast.Module) -> Module:
        m = cls(tree, {"tl": TL, "triton": "triton", "torch": "torch"})
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        m.aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        m.aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    m.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                m.functions[stmt.name] = stmt
        m._find_launches(tree, tree)
        return m

    def _find_launches(self, node: ast.AST, scope: Scope) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                self.parents[child] = scope
                inner = child
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Subscript)
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id in self.functions
            ):
                self.launches.append(Launch(child, child.func.value.id, scope))
            self._find_launches(child, inner)

    def qualname(self, node: ast.AST) -> str | None:
        """`tl.load` -> `triton.language.load`, via the module's imports."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def called(self, node: ast.AST) -> str | None:
        return self.qualname(node.func) if isinstance(node, ast.Call) else None

    def decorators(self, fn: Function) -> list[str]:
        names = []
        for d in fn.decorator_list:
            names.append(self.qualname(d.func if isinstance(d, ast.Call) else d) or "")
        return names

    def is_jit(self, fn: Function) -> bool:
        return any(d in JIT for d in self.decorators(fn))

    def jit_functions(self) -> list[Function]:
        """The module's @triton.jit functions, and the functions it launches without one
        (the `jit` rule reports those; the other rules still look inside them)."""
        launched = {la.kernel for la in self.launches}
        return [fn for fn in self.functions.values() if self.is_jit(fn) or fn.name in launched]

    def kernels(self) -> list[Function]:
        launched = {la.kernel for la in self.launches}
        jit = self.jit_functions()
        helpers = {
            n.func.id
            for fn in jit
            for n in _walk_local(fn.body)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        device = {f"{TL}.program_id", f"{TL}.load", f"{TL}.store"}
        return [
            fn
            for fn in jit
            if fn.name in launched
            or (fn.name not in helpers and any(self.called(n) in device for n in ast.walk(fn)))
        ]

    def resolve(self, name: str, scope: Scope, before: int) -> Bound | None:
        """What `name` is bound to, and where: the last assignment (or local `def`) before
        line `before` in `scope`, else at module level; None if unknown (a parameter, an
        unpacked tuple, a loop variable, ...). "Last" is textual: branches are not merged.
        A nested function sees its enclosing function's last binding of `name`."""
        found: tuple[int, ast.AST] | None = None
        for node in _walk_local(scope.body):
            value = _binding(node, name)
            lineno = getattr(node, "lineno", 0)
            if value is not None and lineno < before and (found is None or lineno > found[0]):
                found = (lineno, value)
        if found is not None:
            return Bound(found[1], scope, found[0])
        if isinstance(scope, ast.Module):
            return None
        if any(a.arg == name for a in _params(scope)):
            return None
        return self.resolve(name, self.parents.get(scope, self.tree), 1 << 30)


@dataclass(frozen=True)
class Bound:
    value: ast.AST  # an expression, or a FunctionDef for `def name`
    scope: Scope
    line: int


def _binding(node: ast.AST, name: str) -> ast.AST | None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
        return node
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.value if node.target.id == name else None
    if not isinstance(node, ast.Assign):
        return None
    for target in node.targets:
        if isinstance(target, ast.Name) and target.id == name:
            return node.value
        if isinstance(target, ast.Tuple | ast.List) and isinstance(
            node.value, ast.Tuple | ast.List
        ):
            for t, v in zip(target.elts, node.value.elts, strict=False):
                if isinstance(t, ast.Name) and t.id == name:
                    return v
    return None


def _params(fn: Function) -> list[ast.arg]:
    return fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs


def _is_constexpr(m: Module, arg: ast.arg) -> bool:
    return arg.annotation is not None and m.qualname(arg.annotation) == f"{TL}.constexpr"


def _int_literal(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


# -- rule: jit ------------------------------------------------------------------------


def rule_jit(m: Module) -> Iterator[Problem]:
    launched: dict[str, int] = {}
    for la in m.launches:
        launched.setdefault(la.kernel, la.call.lineno)
    called: dict[str, tuple[str, int]] = {}  # module function -> (jit caller, line)
    for caller in (fn for fn in m.jit_functions() if m.is_jit(fn)):
        for n in _walk_local(caller.body):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                called.setdefault(n.func.id, (caller.name, n.lineno))
    for fn in ast.walk(m.tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            problem = _jit_problem(m, fn, launched, called)
            if problem is not None:
                yield fn.lineno, problem


def _jit_problem(
    m: Module, fn: Function, launched: dict[str, int], called: dict[str, tuple[str, int]]
) -> str | None:
    decorators = m.decorators(fn)
    module_level = m.functions.get(fn.name) is fn
    if m.is_jit(fn):
        if any(d in WRAPPERS for d in decorators[_index(decorators, JIT) + 1 :]):
            return (
                f"@triton.jit must be the innermost decorator of `{fn.name}` "
                "(below @triton.autotune / @triton.heuristics)"
            )
        return None
    if module_level and fn.name in launched:
        return (
            f"`{fn.name}` is launched as a kernel (line {launched[fn.name]}) "
            "but is not decorated with @triton.jit"
        )
    if module_level and fn.name in called and not any(d.startswith("triton.") for d in decorators):
        caller, line = called[fn.name]
        return (
            f"`{fn.name}` is called from @triton.jit `{caller}` (line {line}) "
            "but is not decorated with @triton.jit"
        )
    for n in _walk_local(fn.body):
        if isinstance(n, ast.Call) and m.called(n) in DEVICE_OPS:
            op = (m.called(n) or "").replace(TL, "tl")
            return (
                f"`{fn.name}` calls {op} (line {n.lineno}), which runs only in a kernel, "
                "but is not decorated with @triton.jit"
            )
    return None


def _index(names: list[str], wanted: set[str]) -> int:
    return next(i for i, name in enumerate(names) if name in wanted)


# -- rule: store-count ----------------------------------------------------------------


def _descriptors(m: Module, fn: Function) -> set[str]:
    names = {a.arg for a in _params(fn) if "desc" in a.arg.lower()}
    for node in _walk_local(fn.body):
        if isinstance(node, ast.Assign) and m.called(node.value) in DESCRIPTORS:
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _is_store(m: Module, call: ast.Call, descriptors: set[str]) -> bool:
    if m.called(call) in {f"{TL}.store", f"{TL}.store_tensor_descriptor"}:
        return True
    f = call.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr == "store"
        and isinstance(f.value, ast.Name)
        and f.value.id in descriptors
    )


Store = tuple[int, frozenset[str]]  # (line, the pointer parameters it may write)


def _store_paths(m: Module, fn: Function, stack: tuple[str, ...] = ()) -> list[list[Store]]:
    """The stores along each path through `fn` (see the module docstring): an `if`/`else`
    forks the path, a loop body counts once, a jit helper's stores count at each call."""
    descriptors = _descriptors(m, fn)
    bases = _Bases(m, fn)

    def join(paths: list[list[Store]], tails: list[list[Store]]) -> list[list[Store]]:
        joined = {tuple(p + t): p + t for p in paths for t in tails}
        return list(joined.values())

    def in_expr(node: ast.AST) -> list[list[Store]]:
        paths: list[list[Store]] = [[]]
        for n in _walk_local([node]):
            if not isinstance(n, ast.Call):
                continue
            if _is_store(m, n, descriptors):
                f = n.func
                plain = m.called(n) in {f"{TL}.store", f"{TL}.store_tensor_descriptor"}
                first = [*n.args, *(k.value for k in n.keywords if k.arg in POINTER_KEYWORDS)]
                if isinstance(f, ast.Attribute) and not plain:
                    first = [f.value]  # desc.store(...)
                written = frozenset(bases.of(first[0])) if first else frozenset()
                paths = join(paths, [[(n.lineno, written)]])
            elif isinstance(n.func, ast.Name) and n.func.id not in (*stack, fn.name):
                helper = m.functions.get(n.func.id)
                if helper is not None and m.is_jit(helper):
                    params = [a.arg for a in _params(helper)]
                    args = dict(zip(params, n.args, strict=False))
                    args.update((k.arg, k.value) for k in n.keywords if k.arg is not None)
                    # the helper's stores, written through the caller's pointers
                    effects = _effects(m, helper, (*stack, fn.name))["store"]
                    used = frozenset(b for q in effects if q in args for b in bases.of(args[q]))
                    inner = _store_paths(m, helper, (*stack, fn.name))
                    paths = join(paths, [[(line, used) for line, _ in p] for p in inner])
        return paths

    def in_block(stmts: list[ast.stmt]) -> list[list[Store]]:
        paths: list[list[Store]] = [[]]
        for s in stmts:
            if isinstance(s, ast.If):
                paths = join(paths, in_expr(s.test))
                paths = join(paths, in_block(s.body) + in_block(s.orelse))
            elif isinstance(s, ast.For | ast.While):
                paths = join(paths, in_expr(s.iter if isinstance(s, ast.For) else s.test))
                paths = join(paths, join(in_block(s.body), in_block(s.orelse)))
            elif isinstance(s, ast.With):
                for i in s.items:
                    paths = join(paths, in_expr(i.context_expr))
                paths = join(paths, in_block(s.body))
            elif not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                paths = join(paths, in_expr(s))
        return paths

    return in_block(fn.body)


def _tensor(m: Module, node: ast.AST, scope: Scope, before: int) -> str | None:
    """The name of the launcher-allocated tensor that launch argument `node` passes, if any:
    `out` for `out` bound to torch.empty(...), or for TensorDescriptor.from_tensor(out, ...)."""
    value: ast.AST | None = node
    if isinstance(node, ast.Name):
        bound = m.resolve(node.id, scope, before)
        if bound is None:
            return None
        value, scope, before = bound.value, bound.scope, bound.line
    if not isinstance(value, ast.Call):
        return None
    name = m.called(value) or ""
    alloc = name in ALLOC or (
        isinstance(value.func, ast.Attribute) and value.func.attr in ALLOC_METHODS
    )
    if isinstance(node, ast.Name) and alloc:
        return node.id
    if name.split(".")[-1] in {"TensorDescriptor", "from_tensor"} and value.args:
        return _tensor(m, value.args[0], scope, before)
    return None


def _used_after(scope: Scope, line: int) -> set[str]:
    """Names read in `scope` after `line`: returned, saved, passed on."""
    return {
        n.id
        for n in _walk_local(scope.body)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.lineno > line
    }


@dataclass
class Outputs:
    names: list[str]  # the launcher's tensors
    params: list[str | None]  # the kernel parameters they arrive in (None: not known)
    line: int  # the launch
    scratch: set[str] = field(default_factory=set)  # parameters given unread allocations


def _declared(m: Module, kernel: Function) -> Outputs | None:
    """The outputs a kgen runtime declaration gives `kernel`, if one names it."""
    for node in ast.walk(m.tree):
        if not isinstance(node, ast.Call) or not (m.called(node) or "").endswith(".GemmOp"):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        rows = keywords.get("rows")
        finish = None
        if isinstance(rows, ast.Call):
            finish = {k.arg: k.value for k in rows.keywords}.get("finish")
        named = [ast.unparse(a) for a in node.args[1:2]]
        # the forward kernel's outputs: out, and the accumulator a training call saves
        out, ptrs = ["out", "save"], ["out_ptr", "save_ptr"]
        if kernel.name in named:
            if finish is not None and ast.unparse(finish) != "None":
                return Outputs([*out, "stats"], [*ptrs, "stats_ptr"], node.lineno)
            if rows is not None:
                return Outputs(out, list(ptrs), node.lineno)
            scratch = {"split_partials_ptr", "split_counts_ptr"}
            return Outputs(out, list(ptrs), node.lineno, scratch)
        if finish is not None and ast.unparse(finish) == kernel.name:
            return Outputs(["out"], ["out_ptr"], node.lineno)
        backward = keywords.get("backward")
        if isinstance(backward, ast.Call):
            fields = {k.arg: k.value for k in backward.keywords}
            if ast.unparse(fields.get("kernel", ast.Constant(None))) == kernel.name:
                # dz, and each operand's gradient (kgen/lower/backward.py)
                listed = fields.get("grads")
                grads = () if listed is None else ast.literal_eval(listed)
                names = ["dz", *(f"grad_{g}" for g in grads)]
                params = ["_dz_ptr", *(f"_grad_{g}_ptr" for g in grads)]
                return Outputs(names, list(params), node.lineno)
    return None


def _outputs(m: Module, kernel: Function) -> Outputs | None:
    """The most outputs any launch of `kernel` shows."""
    if not any(la.kernel == kernel.name for la in m.launches):
        return _declared(m, kernel)
    best: Outputs | None = None
    params = [a.arg for a in _params(kernel)]
    for la in m.launches:
        if la.kernel != kernel.name:
            continue
        used = _used_after(la.scope, la.call.end_lineno or la.call.lineno)
        args: list[tuple[str | None, ast.expr]] = list(zip(params, la.call.args, strict=False))
        args += [(k.arg, k.value) for k in la.call.keywords if k.arg in params]
        if len(la.call.args) > len(params):  # *args in the kernel: positions unknown
            args = [(None, a) for a in la.call.args] + args[len(params) :]
        outs = Outputs([], [], la.call.lineno)
        for param, arg in args:
            name = _tensor(m, arg, la.scope, la.call.lineno)
            if name is not None and name in used and name not in outs.names:
                outs.names.append(name)
                outs.params.append(param)
            elif name is not None and name not in used and param is not None:
                outs.scratch.add(param)
        if outs.names and (best is None or len(outs.names) > len(best.names)):
            best = outs
    return best


def rule_store_count(m: Module) -> Iterator[Problem]:
    for fn in m.kernels():
        outputs = _outputs(m, fn)
        scratch = outputs.scratch if outputs is not None else set()
        paths = [
            [(line, written) for line, written in path if not written or not written <= scratch]
            for path in _store_paths(m, fn)
        ]
        n = 1 if outputs is None else len(outputs.names)
        if outputs is None:
            why = "is assumed to have 1 output (no launch shows the outputs it allocates)"
        else:
            names = ", ".join(f"`{o}`" for o in outputs.names)
            plural = "output" if n == 1 else "outputs"
            why = f"has {n} {plural} ({names}: see the launch at line {outputs.line})"
        most = max(paths, key=len)
        if len(most) > n or not most:
            lines = [line for line, _ in most]
            where = ", ".join(map(str, sorted(set(lines))))
            calls = f"{len(lines)} tl.store call{'s' if len(lines) > 1 else ''}"
            stores = (
                f"{calls} (line{'s' if len(set(lines)) > 1 else ''} {where})"
                if lines
                else "no tl.store"
            )
            yield fn.lineno, f"kernel `{fn.name}` has {stores} but {why}"
            continue
        for path in paths:  # a kernel with modes (constexpr branches) may store per mode
            seen: dict[str, int] = {}
            for line, written in path:
                for base in sorted(written):
                    if base in seen:
                        yield (
                            fn.lineno,
                            (
                                f"kernel `{fn.name}` stores to `{base}` twice on one path "
                                f"(lines {seen[base]}, {line}): keep one final store per output"
                            ),
                        )
                        break
                    seen[base] = line
        targets = [written for path in paths for _, written in path]
        if outputs is not None and all(targets) and None not in outputs.params:
            written = frozenset().union(*targets)
            for name, param in zip(outputs.names, outputs.params, strict=True):
                if param not in written:
                    yield (
                        fn.lineno,
                        (
                            f"kernel `{fn.name}` never stores output `{name}` (its parameter "
                            f"`{param}`) on any path, but {why}"
                        ),
                    )


# -- rule: store-then-load ------------------------------------------------------------


def _integer_params(m: Module, fn: Function) -> set[str]:
    """Parameters used as integers: never pointer bases."""
    names: set[str] = {a.arg for a in _params(fn) if _is_constexpr(m, a)}
    for n in _walk_local(fn.body):
        operands: list[ast.expr] = []
        if isinstance(n, ast.BinOp) and not isinstance(n.op, ast.Add | ast.Sub):
            operands = [n.left, n.right]
        elif isinstance(n, ast.Compare):
            operands = [n.left, *n.comparators]
        elif isinstance(n, ast.Call) and (
            m.called(n) in {"range", f"{TL}.range", f"{TL}.static_range", f"{TL}.arange"} | CDIV
        ):
            operands = list(n.args)
        names |= {o.id for o in operands if isinstance(o, ast.Name)}
    return names - {a.arg for a in _params(fn) if re.search("ptr|desc", a.arg, re.I)}


class _Bases:
    """The pointer parameters an expression in `fn` derives from."""

    def __init__(self, m: Module, fn: Function) -> None:
        self.m = m
        self.fn = fn
        self.params = {a.arg for a in _params(fn)} - _integer_params(m, fn)
        self.descriptors = _descriptors(m, fn)
        self.assigned: dict[str, list[ast.expr]] = {}
        for node in _walk_local(fn.body):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and node.value is not None:
                        self.assigned.setdefault(t.id, []).append(node.value)

    def of(self, node: ast.AST, seen: frozenset[str] = frozenset()) -> set[str]:
        if isinstance(node, ast.Name):
            if node.id in self.params:
                return {node.id}
            if node.id in seen:
                return set()
            return {b for v in self.assigned.get(node.id, []) for b in self.of(v, seen | {node.id})}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            return self.of(node.left, seen) | self.of(node.right, seen)
        if isinstance(node, ast.Subscript):
            return self.of(node.value, seen)
        if isinstance(node, ast.IfExp):
            return self.of(node.body, seen) | self.of(node.orelse, seen)
        if isinstance(node, ast.Call) and self.m.called(node) in POINTER_PASS:
            base = [k.value for k in node.keywords if k.arg == "base"] or node.args[:1]
            return self.of(base[0], seen) if base else set()
        return set()


Access = tuple[str, int, set[str]]  # ("load" | "store", line, base pointer parameters)


def _accesses(
    m: Module, fn: Function, node: ast.AST, bases: _Bases, stack: tuple[str, ...] = ()
) -> list[Access]:
    """The memory accesses in `node` (a statement or expression of `fn`), loads first: a
    statement reads before it writes. A call to a jit helper accesses what the helper
    loads from or stores to through its pointer parameters."""
    descriptors = bases.descriptors
    found: list[Access] = []
    for c in _walk_local([node]):
        if not isinstance(c, ast.Call):
            continue
        f = c.func
        name = m.called(c)
        sem = next((k.value for k in c.keywords if k.arg == "sem"), None)
        if (
            (name or "").startswith(f"{TL}.atomic_")
            and isinstance(sem, ast.Constant)
            and sem.value in ("acquire", "acq_rel")
        ):
            found.append(("sync", c.lineno, set()))
        for kind in ("load", "store"):
            target = f.value if isinstance(f, ast.Attribute) and f.attr == kind else None
            if name in {f"{TL}.{kind}", f"{TL}.{kind}_tensor_descriptor"} and c.args:
                found.append((kind, c.lineno, bases.of(c.args[0])))
            elif isinstance(target, ast.Name) and target.id in descriptors:
                found.append((kind, c.lineno, bases.of(target)))  # desc.load / desc.store
        helper = m.functions.get(f.id) if isinstance(f, ast.Name) else None
        if helper is not None and m.is_jit(helper) and helper.name not in (*stack, fn.name):
            effects = _effects(m, helper, (*stack, fn.name))
            params = [a.arg for a in _params(helper)]
            args = dict(zip(params, c.args, strict=False))
            args.update((k.arg, k.value) for k in c.keywords if k.arg is not None)
            for kind in ("load", "store"):
                used = {b for p in effects[kind] if p in args for b in bases.of(args[p])}
                if used:
                    found.append((kind, c.lineno, used))
    order = {"load": 0, "store": 1, "sync": 2}
    return sorted(found, key=lambda access: order[access[0]])


def _effects(m: Module, helper: Function, stack: tuple[str, ...]) -> dict[str, set[str]]:
    """The parameters of jit `helper` that it loads from and stores to."""
    if helper.name not in m.effects:
        bases = _Bases(m, helper)
        effects: dict[str, set[str]] = {"load": set(), "store": set()}
        for stmt in helper.body:
            for kind, _, used in _accesses(m, helper, stmt, bases, stack):
                if kind != "sync":
                    effects[kind] |= used
        m.effects[helper.name] = effects
    return m.effects[helper.name]


def rule_store_then_load(m: Module) -> Iterator[Problem]:
    for fn in m.jit_functions():
        yield from _store_then_load(m, fn)


def _store_then_load(m: Module, fn: Function) -> Iterator[Problem]:
    bases = _Bases(m, fn)

    def visit(node: ast.AST, stored: dict[str, int]) -> Iterator[Problem]:
        for kind, line, used in _accesses(m, fn, node, bases):
            if kind == "sync":  # what was stored before is another program's to read
                stored.clear()
            for base in sorted(used):
                if kind == "store":
                    stored.setdefault(base, line)
                elif base in stored:
                    yield (
                        line,
                        (
                            f"`{fn.name}` loads from `{base}` after storing to it "
                            f"(line {stored[base]}): keep the value in registers"
                        ),
                    )

    def walk(stmts: list[ast.stmt], stored: dict[str, int]) -> Iterator[Problem]:
        for s in stmts:
            if isinstance(s, ast.If):
                yield from visit(s.test, stored)
                other = dict(stored)
                yield from walk(s.body, stored)
                yield from walk(s.orelse, other)
                for k, v in other.items():
                    stored.setdefault(k, v)
            elif isinstance(s, ast.For | ast.While):
                yield from visit(s.iter if isinstance(s, ast.For) else s.test, stored)
                yield from walk(s.body + s.orelse, stored)
            elif isinstance(s, ast.With):
                yield from walk(s.body, stored)
            elif not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from visit(s, stored)

    yield from walk(fn.body, {})


# -- rule: pow2-block -----------------------------------------------------------------


def rule_pow2_block(m: Module) -> Iterator[Problem]:
    def found(node: ast.expr | None, name: str, where: str, line: int = 0) -> Iterator[Problem]:
        value = _int_literal(node)
        if node is not None and value is not None and (value < 1 or value & (value - 1)):
            yield line or node.lineno, f"block size {name} = {value} {where} is not a power of two"

    for fn in m.jit_functions():  # BLOCK_M: tl.constexpr = 48
        args = fn.args.posonlyargs + fn.args.args
        defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
        pairs = zip([*args, *fn.args.kwonlyargs], [*defaults, *fn.args.kw_defaults], strict=True)
        for arg, default in pairs:
            if BLOCK_NAME.fullmatch(arg.arg) and _is_constexpr(m, arg):
                yield from found(default, arg.arg, f"(default of `{fn.name}`)")
    for node in ast.walk(m.tree):  # triton.Config({"BLOCK_M": 48}, ...)
        if isinstance(node, ast.Call) and m.called(node) in CONFIG:
            kwargs = [k.value for k in node.keywords if k.arg == "kwargs"]
            for d in node.args[:1] + kwargs:
                if not isinstance(d, ast.Dict):
                    continue
                for key, value in zip(d.keys, d.values, strict=True):
                    name = key.value if isinstance(key, ast.Constant) else None
                    if isinstance(name, str) and BLOCK_NAME.fullmatch(name):
                        yield from found(value, name, "in triton.Config")
    for la in m.launches:  # kernel[grid](..., BLOCK_M=48) or BLOCK_M=block with block = 48
        for kw in la.call.keywords:
            if kw.arg is None or not BLOCK_NAME.fullmatch(kw.arg):
                continue
            if not isinstance(kw.value, ast.Name):
                yield from found(kw.value, kw.arg, "at launch")
                continue
            bound = m.resolve(kw.value.id, la.scope, la.call.lineno)
            if bound is None or (bound.scope is m.tree and BLOCK_NAME.fullmatch(kw.value.id)):
                continue  # unknown, or a module-level BLOCK* constant: reported below
            if isinstance(bound.value, ast.expr):
                where = f"(`{kw.value.id}`, line {bound.line}) at launch"
                yield from found(bound.value, kw.arg, where, kw.value.lineno)
    for stmt in m.tree.body:  # BLOCK_SIZE = 1000
        if isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                if isinstance(t, ast.Name) and BLOCK_NAME.fullmatch(t.id):
                    yield from found(stmt.value, t.id, "(module constant)")


# -- rule: loop-exit ------------------------------------------------------------------


def rule_loop_exit(m: Module) -> Iterator[Problem]:
    def walk(stmts: list[ast.stmt], fn: str, loop: bool) -> Iterator[Problem]:
        for s in stmts:
            if isinstance(s, ast.Break | ast.Continue | ast.Return) and loop:
                word = type(s).__name__.lower()
                yield (
                    s.lineno,
                    (
                        f"`{word}` inside a loop in @triton.jit `{fn}`: Triton does not compile "
                        "it; use a mask or the loop bound"
                    ),
                )
            elif isinstance(s, ast.For | ast.While | ast.AsyncFor):
                yield from walk(s.body, fn, True)
                yield from walk(s.orelse, fn, loop)
            elif isinstance(s, ast.If | ast.With | ast.AsyncWith | ast.Try):
                for block in ("body", "orelse", "finalbody"):
                    yield from walk(getattr(s, block, []), fn, loop)
                for handler in getattr(s, "handlers", []):
                    yield from walk(handler.body, fn, loop)
            elif isinstance(s, ast.Match):
                for case in s.cases:
                    yield from walk(case.body, fn, loop)

    for fn in m.jit_functions():
        yield from walk(fn.body, fn.name, False)


# -- rule: zero-grid ------------------------------------------------------------------


def _guarded(scope: Scope, name: str, before: int) -> bool:
    """Does `scope` return or raise under `if name == 0` (or <= 0, < 1, not name) first?"""

    def zero_test(t: ast.expr) -> bool:
        if isinstance(t, ast.BoolOp) and isinstance(t.op, ast.Or):
            return any(zero_test(v) for v in t.values)
        if isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
            return isinstance(t.operand, ast.Name) and t.operand.id == name
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.left, ast.Name):
            bound = _int_literal(t.comparators[0])
            op = t.ops[0]
            return t.left.id == name and (
                (isinstance(op, ast.Eq | ast.LtE) and bound == 0)
                or (isinstance(op, ast.Lt) and bound == 1)
            )
        return False

    return any(
        isinstance(n, ast.If)
        and n.lineno < before
        and zero_test(n.test)
        and isinstance(n.body[-1], ast.Return | ast.Raise)
        for n in _walk_local(scope.body)
    )


def _nonzero(m: Module, e: ast.AST, scope: Scope, before: int, depth: int = 0) -> ast.AST | None:
    """None if grid entry `e` is provably >= 1, else the offending sub-expression."""
    if depth > 20:
        return e

    def sub(node: ast.AST, in_scope: Scope = scope, line: int = before) -> ast.AST | None:
        return _nonzero(m, node, in_scope, line, depth + 1)

    if isinstance(e, ast.Constant):
        return None if type(e.value) is int and e.value >= 1 else e
    if isinstance(e, ast.Attribute) and e.attr == "multi_processor_count":
        return None  # a device's SM count
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult | ast.Add):
        return sub(e.left) or sub(e.right)
    if isinstance(e, ast.Name):
        if _guarded(scope, e.id, before):
            return None
        bound = m.resolve(e.id, scope, before)
        if bound is None:
            return e
        return sub(bound.value, bound.scope, bound.line) if isinstance(bound.value, ast.expr) else e
    if isinstance(e, ast.Subscript) and (index := _int_literal(e.slice)) is not None:
        tuples = _values(m, e.value, scope, before, depth + 1)
        for t, t_scope, t_line in tuples or [(e, scope, before)]:
            if not isinstance(t, ast.Tuple | ast.List) or not -len(t.elts) <= index < len(t.elts):
                return e
            if sub(t.elts[index], t_scope, t_line) is not None:
                return e
        return None
    if not isinstance(e, ast.Call):
        return e
    name = m.called(e)
    if name in CDIV:
        return None
    bad = [sub(a) for a in e.args]
    if name == "max":
        return None if None in bad else e
    if name in {"min", "int"} and e.args:
        return next((b for b in bad if b is not None), None)
    values = _values(m, e, scope, before, depth + 1)
    if values is None or any(sub(v, v_scope, line) for v, v_scope, line in values):
        return e
    return None


def _values(
    m: Module, e: ast.AST, scope: Scope, before: int, depth: int
) -> list[tuple[ast.AST, Scope, int]] | None:
    """The expressions `e` may evaluate to, following names and calls of module-level
    (non-jit) functions into their `return`s; None where that cannot be seen."""
    if depth > 20:
        return None
    if isinstance(e, ast.Name):
        bound = m.resolve(e.id, scope, before)
        if bound is None or not isinstance(bound.value, ast.expr):
            return None
        return _values(m, bound.value, bound.scope, bound.line, depth + 1)
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name):
        fn = m.functions.get(e.func.id)
        if fn is None or m.is_jit(fn):
            return None
        found: list[tuple[ast.AST, Scope, int]] = []
        for r in _walk_local(fn.body):
            if isinstance(r, ast.Return):
                if r.value is None:
                    return None
                values = _values(m, r.value, fn, r.lineno, depth + 1)
                if values is None:
                    return None
                found += values
        return found or None
    return [(e, scope, before)]


def _grid_problems(
    m: Module, grid: ast.AST, scope: Scope, before: int
) -> Iterator[tuple[ast.AST, ast.AST]]:
    """(grid entry, its offending sub-expression) for each entry not provably >= 1; a grid
    that cannot be seen (a parameter) gives (grid, grid) for the name itself."""
    if isinstance(grid, ast.Tuple | ast.List):
        for entry in grid.elts:
            bad = _nonzero(m, entry, scope, before)
            if bad is not None:
                yield entry, bad
    elif isinstance(grid, ast.Lambda):
        yield from _grid_problems(m, grid.body, scope, before)
    elif isinstance(grid, ast.FunctionDef | ast.AsyncFunctionDef):
        for r in _walk_local(grid.body):
            if isinstance(r, ast.Return) and r.value is not None:
                yield from _grid_problems(m, r.value, grid, r.lineno)
    elif isinstance(grid, ast.Name):
        bound = m.resolve(grid.id, scope, before)
        if bound is None:
            yield grid, grid
        else:
            yield from _grid_problems(m, bound.value, bound.scope, bound.line)
    else:
        bad = _nonzero(m, grid, scope, before)
        if bad is not None:
            yield grid, bad


def _in_tuple(m: Module, node: ast.AST) -> bool:
    return any(isinstance(t, ast.Tuple | ast.List) and node in t.elts for t in ast.walk(m.tree))


def rule_zero_grid(m: Module) -> Iterator[Problem]:
    for la in m.launches:
        for entry, bad in _grid_problems(m, la.grid, la.scope, la.call.lineno):
            line = getattr(entry, "lineno", la.call.lineno)
            launch = f"`{la.kernel}`" + (
                f" (launched at line {la.call.lineno})" if line != la.call.lineno else ""
            )
            if (
                isinstance(entry, ast.Name)
                and entry is bad
                and m.resolve(entry.id, la.scope, la.call.lineno) is None
                and entry is la.grid
            ):
                yield (
                    line,
                    (
                        f"cannot see how grid `{entry.id}` of {launch} is built: "
                        "build it here from triton.cdiv(...) or max(1, ...)"
                    ),
                )
                continue
            through = ""
            if bad is not entry:
                bad_line = getattr(bad, "lineno", line)
                at = f", line {bad_line}" if bad_line != line else ""
                through = f" (through `{_src(bad)}`{at})"
            yield (
                line,
                (
                    f"grid entry `{_src(entry)}`{through} of {launch} may be 0: "
                    "use triton.cdiv(...) or max(1, ...)"
                ),
            )


# -- driver ---------------------------------------------------------------------------

Rule = Callable[[Module], Iterable[Problem]]
RULES: tuple[tuple[str, Rule], ...] = (
    ("jit", rule_jit),
    ("store-count", rule_store_count),
    ("store-then-load", rule_store_then_load),
    ("pow2-block", rule_pow2_block),
    ("loop-exit", rule_loop_exit),
    ("zero-grid", rule_zero_grid),
)


def check_source(path: str, text: str) -> list[Finding]:
    """Every finding in one module's source, sorted by line."""
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as error:
        return [Finding(path, error.lineno or 1, "syntax", error.msg)]
    except ValueError as error:  # e.g. a NUL byte
        return [Finding(path, 1, "syntax", str(error))]
    except (RecursionError, MemoryError):
        return [Finding(path, 1, "syntax", "nested too deeply for Python's parser")]
    try:
        m = Module.parse(tree)
        findings = {
            Finding(path, line, rule, message) for rule, fn in RULES for line, message in fn(m)
        }
    except (RecursionError, MemoryError):
        return [Finding(path, 1, "syntax", "nested too deeply to check")]
    return sorted(findings)


def check_files(paths: Iterable[str | Path]) -> list[Finding]:
    findings: list[Finding] = []
    for p in paths:
        try:
            text = Path(p).read_bytes().decode("utf-8")
        except OSError as error:
            findings.append(Finding(str(p), 1, "read", f"cannot read: {error.strerror}"))
        except UnicodeDecodeError as error:
            findings.append(Finding(str(p), 1, "read", f"not UTF-8: {error.reason}"))
        else:
            findings += check_source(str(p), text)
    return findings
