"""Stage 2 of the pipeline: syntax tree -> IR (`kgen.ir.Kernel`).

Resolves every name (params, inputs, bound names, `def` ops, built-in ops), gives each
value its kind and checks each op's arguments against its registry signature, inlines
`def`s, folds constant subexpressions, shares repeated subexpressions and drops dead
ones. Every user mistake becomes a `SpecError` at its position; what is legal but
likely unintended (an undeclared name, a bias never applied) becomes a note.

Names from a spec end up in generated Python and Triton source, so each is checked
here against Python's keywords and the identifiers the generated module uses itself
(`RESERVED`); nothing unchecked is ever pasted into source.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath

import torch

from kgen import ops
from kgen.errors import (
    ArgumentError,
    Diagnostic,
    KindError,
    LimitError,
    NameClashError,
    NotSupportedError,
    Span,
    SpecError,
    UndefinedNameError,
    UnknownOpError,
    UnknownStatementError,
    did_you_mean,
)
from kgen.ir import (
    DEFAULT_PRECISION,
    DTYPES,
    PRECISIONS,
    Gemm,
    InitArg,
    Instr,
    Kernel,
    Kind,
    Operand,
    Role,
)
from kgen.syntax import (
    MAX_DEPTH,
    Argument,
    BinOp,
    Call,
    Compare,
    DefStmt,
    EpilogueStmt,
    Expr,
    GemmStmt,
    InitStmt,
    InputStmt,
    Name,
    NameStmt,
    Neg,
    Number,
    OpStep,
    OutputStmt,
    ParamStmt,
    PrecisionStmt,
    SpecTree,
    Statement,
    depth_error,
)
from kgen.verify import verify

# Identifiers the generated module uses for itself (kernel, launcher, nn.Module).
# A spec may not name anything after them; names starting with "_", ending in
# "_ptr" or starting with "stride_" are reserved too (see `_check_name`).
RESERVED: frozenset[str] = frozenset(
    [
        "acc",
        "x",
        "weight",
        "bias",
        "out",
        "M",
        "N",
        "K",
        "config",
        "self",
        "true",
        "false",
        "tl",
        "triton",
        "torch",
        "nn",
        "super",
        "float",
        "min",
        "range",
        "linear",
        "ModelNew",
        "pid",
        "num_pid_m",
        "num_pid_n",
        "num_pid_in_group",
        "group_id",
        "first_pid_m",
        "group_size_m",
        "pid_m",
        "pid_n",
        "offs_m",
        "offs_n",
        "offs_k",
        "offs_xm",
        "offs_wn",
        "x_ptrs",
        "w_ptrs",
        "x_tile",
        "w_tile",
        "k_step",
        "k_mask",
        "mask_m",
        "mask_n",
        "mask_mn",
        "out_ptrs",
        "BLOCK_M",
        "BLOCK_N",
        "BLOCK_K",
        "GROUP_M",
        "UPCAST_DOT",
        "SUBTILES",
        "acc_tile",
        "subtile",
        "acc_halves",
        # the mainloops and their launch (issue 3)
        "TMA",
        "FLATTEN",
        "WIDE",
        "TensorDescriptor",
        "x_desc",
        "w_desc",
        "num_tiles",
        "k_steps",
        "tile_id",
        "tma",
        "grid",
        "loop",
        "block_m",
        "block_n",
        "block_k",
        "group_m",
        "num_warps",
        "num_stages",
        # row operations (issue 5)
        "tile_n",
        "seg_n",
        "seg_tiles",
        "num_segs",
        "n0",
        "local_n",
        "row_block",
        "seg_id",
        "chunk",
        "stat_t",
        "SPLIT",
        "BLOCK_T",
        "ROW_BLOCK_MAX",
        "ALIGNED",
        "CHUNKS",
        "num_tiles_n",
        "row_stats",
        "row_split",
        "row_block_n",
        "stage_elements",
        "row_consts",
        "block_t",
        "finish_chunks",
        "wide_index",
        "gcol",
        "col_ok",
        "tile_relative",
        "first_chunk",
        "tile_ids",
        "tile_mask",
        "stat_rows",
        # split-K (kgen/configs.py)
        "SPLIT_K",
        "split_k",
        "split_k_first",
        "split_k_end",
        "split_k_per",
        "split_last",
        "split_tile",
        "split_offs",
        "split_arrived",
        "split_s",
        "split_partials",
        "split_counts",
        "split_partials_ptr",
        "split_counts_ptr",
        # the module's imports (a kernel of that name would replace one)
        "math",
        "os",
        "json",
        "warnings",
    ]
)
# Params become attributes of the generated nn.Module: they must not replace its own.
MODULE_ATTRIBUTES: frozenset[str] = frozenset(
    n for n in [*dir(torch.nn.Module), *vars(torch.nn.Module())] if not n.startswith("_")
)

_VALUE_INITS = ("randn", "zeros", "ones")
# The most work (values evaluated or emitted, CSE hits included) one spec may take to
# analyze: each call of a def repeats its body, so a few lines of defs calling defs
# could otherwise ask for billions of operations (LANGUAGE.md).
MAX_OPERATIONS = 100_000
# The kernel's name is a global of the generated module: it must not hide a builtin.
_BUILTINS: frozenset[str] = frozenset(dir(builtins))


def name_problem(n: str) -> str | None:
    """Why `n` cannot name anything in a spec (it ends up in generated code), or None."""
    if keyword.iskeyword(n) or keyword.issoftkeyword(n):
        return "is a Python keyword"
    if n.startswith("_"):
        return "starts with '_', which kgen reserves for generated code"
    if n.endswith("_ptr") or n.startswith("stride_"):
        return "has a form ('*_ptr', 'stride_*') that kgen reserves for generated code"
    if n in ("true", "false"):
        return "is a boolean"
    if n in RESERVED or re.fullmatch(r"(N?SEG|BN)_\d+", n):
        return "is used by the generated module"
    if n in MODULE_ATTRIBUTES:
        return "is an attribute of torch.nn.Module, which the generated module is"
    return None


@dataclass
class _Env:
    """What names mean while building one expression."""

    acc: Instr
    bound: dict[str, tuple[Instr, Span]]  # epilogue bindings (not visible inside defs)
    def_args: dict[str, Instr] = field(default_factory=dict)
    visible_defs: int = 0  # defs[:visible_defs] may be called


@dataclass
class _DefInfo:
    stmt: DefStmt
    index: int
    used: bool = False


class _Analyzer:
    def __init__(self, tree: SpecTree, filename: str, text: str) -> None:
        self.tree = tree
        self.filename = PurePath(filename).name
        self.text = text
        self.body: list[Instr] = []
        self.cse: dict[tuple[object, ...], int] = {}
        self.operands: dict[str, Operand] = {}
        self.defs: dict[str, _DefInfo] = {}
        self.notes: list[Diagnostic] = []
        self.used_operands: set[str] = set()
        self.bias_applied = False
        self.later: dict[str, Span] = {}  # tensors declared below the line being analyzed
        self.later_defs: dict[str, Span] = {}  # defs declared below it
        self.depth = 0  # operators and calls enclosing the expression being built
        self.work = 0  # values evaluated or emitted so far (MAX_OPERATIONS)
        self.inlining: list[Span] = []  # the def calls whose bodies are being built
        self.step: Span | None = None  # the epilogue step being built
        self.segment: dict[int, int] = {}  # value id -> its segment (ir.Kernel.segments)

    # -- entry point ---------------------------------------------------------

    def run(self) -> Kernel:
        singles = self._collect()
        name = self._kernel_name(singles.get(NameStmt))
        gemm, in_f, out_f, has_bias = self._gemm(singles.get(GemmStmt))
        self.gemm_names = {n for n in (in_f, out_f) if isinstance(n, str)}
        if has_bias:
            self._add_operand(Operand("bias", Role.BIAS, Kind.COL, Span.point(1, 1)))
        self.has_bias = has_bias
        self.gemm_form = gemm
        self.gemm_stmt = singles.get(GemmStmt)
        output = self._choice(singles.get(OutputStmt), "output dtype", DTYPES, None)
        precision = self._choice(
            singles.get(PrecisionStmt), "precision", PRECISIONS, DEFAULT_PRECISION
        )
        assert precision is not None
        acc = self._emit("gemm", (), Kind.TILE, Span.point(1, 1), hint="acc")
        result = self._declarations_and_epilogue(acc)
        for info in self.defs.values():
            if not info.used:
                self.notes.append(
                    Diagnostic(info.stmt.name.span, f"def '{info.stmt.name.name}' is never used")
                )
        epilogue = singles.get(EpilogueStmt)
        init = self._init(singles.get(InitStmt), in_f, out_f)
        self._final_notes(epilogue)
        if {name, f"{name}_kernel", f"{name}_finish"} & (set(self.operands) | self.gemm_names):
            raise NameClashError(
                self._name_span(singles.get(NameStmt)),
                f"the kernel's name '{name}' is also the name of a value",
                "rename the kernel with `name: ...` or the value",
            )
        body, result_id = _prune(self.body, result.id)
        # the linear's bias, then params and inputs as written, then undeclared names as used
        operands = tuple(
            sorted(
                self.operands.values(), key=lambda o: (o.role is not Role.BIAS, o.implicit, o.span)
            )
        )
        return verify(
            Kernel(
                name=name,
                filename=self.filename,
                source=self.text,
                gemm=gemm,
                in_features=in_f,
                out_features=out_f,
                operands=operands,
                init=init,
                body=body,
                result=result_id,
                output_dtype=output,
                precision=precision,
                notes=tuple(sorted(self.notes, key=lambda d: d.span)),
            )
        )

    # -- statements ----------------------------------------------------------

    def _declarations_and_epilogue(self, acc: Instr) -> Instr:
        """Params, inputs, defs and the epilogue; the epilogue's result (acc if none).

        Float params may be declared anywhere (LANGUAGE.md), so they come first; tensors
        (vector and scalar params, inputs) and defs only count above the line that uses
        them, so the rest goes in file order, remembering what is declared further down
        for the error messages."""
        floats = [
            s for s in self.tree.statements if isinstance(s, ParamStmt) and s.type.name == "float"
        ]
        for float_param in floats:
            self._param(float_param)
        floats_ = {id(s) for s in floats}  # (`in floats` would compare: quadratic)
        for stmt in self.tree.statements:
            if isinstance(stmt, (ParamStmt, InputStmt)) and id(stmt) not in floats_:
                self.later.setdefault(stmt.name.name, stmt.name.span)
            elif isinstance(stmt, DefStmt):
                self.later_defs.setdefault(stmt.name.name, stmt.name.span)
        result = acc
        for stmt in self.tree.statements:
            if isinstance(stmt, ParamStmt) and id(stmt) not in floats_:
                self.later.pop(stmt.name.name, None)
                self._param(stmt)
            elif isinstance(stmt, InputStmt):
                self.later.pop(stmt.name.name, None)
                self._input(stmt)
            elif isinstance(stmt, DefStmt):
                self.later_defs.pop(stmt.name.name, None)
                self._define(stmt)
            elif isinstance(stmt, EpilogueStmt):
                result = self._epilogue(stmt, acc)
        return result

    def _collect(self) -> dict[type, Statement]:
        singles: dict[type, Statement] = {}
        for stmt in self.tree.statements:
            if isinstance(stmt, (ParamStmt, InputStmt, DefStmt)):
                continue
            first = singles.get(type(stmt))
            if first is not None:
                word = _STATEMENT_WORDS[type(stmt)]
                raise NameClashError(
                    stmt.span,
                    f"a second '{word}' statement (the first is at {first.span})",
                    f"a spec has at most one '{word}' line",
                )
            singles[type(stmt)] = stmt
        return singles

    def _name_span(self, stmt: Statement | None) -> Span:
        return stmt.name.span if isinstance(stmt, NameStmt) else Span.point(1, 1)

    def _kernel_name(self, stmt: Statement | None) -> str:
        if isinstance(stmt, NameStmt):
            self._check_name(stmt.name, "kernel name")
            if stmt.name.name in _BUILTINS:
                raise NameClashError(
                    stmt.name.span,
                    f"the kernel name '{stmt.name.name}' is a Python builtin, which the "
                    "generated module uses",
                    "pick another name",
                )
            return stmt.name.name
        stem = PurePath(self.filename).stem
        why = "is not a Python identifier" if not stem.isidentifier() else name_problem(stem)
        if why is None and stem in _BUILTINS:
            why = "is a Python builtin"
        if why is not None:
            suggestion = "".join(c if c.isalnum() else "_" for c in stem).strip("_") or "kernel"
            if suggestion[0].isdigit() or name_problem(suggestion) or suggestion in _BUILTINS:
                suggestion = (
                    f"{suggestion}_kernel" if suggestion[0].isalpha() else f"k_{suggestion}"
                )
            raise NameClashError(
                Span.point(1, 1),
                f"the file name '{stem}' {why}, so it cannot name the kernel",
                f"add a line `name: {suggestion}`",
            )
        return stem

    def _gemm(self, stmt: Statement | None) -> tuple[Gemm, str | int, str | int, bool]:
        if not isinstance(stmt, GemmStmt):
            return Gemm.LINEAR, "in_features", "out_features", True
        forms = {g.value: g for g in Gemm}
        form = forms.get(stmt.form.name)
        if form is None:
            raise UnknownStatementError(
                stmt.form.span,
                f"unknown gemm '{stmt.form.name}'",
                did_you_mean(stmt.form.name, forms) or "write linear(IN, OUT) or matmul(IN, OUT)",
            )
        positional = [a for a in stmt.args if a.keyword is None]
        keywords = [a for a in stmt.args if a.keyword is not None]
        for i, arg in enumerate(stmt.args):
            if arg.keyword is None and any(a.keyword is not None for a in stmt.args[:i]):
                raise ArgumentError(arg.span, "a positional argument after a keyword argument")
        names = [a.keyword.name for a in keywords if a.keyword is not None]
        for i, arg in enumerate(keywords):
            assert arg.keyword is not None
            if arg.keyword.name in names[:i]:
                raise ArgumentError(arg.keyword.span, f"argument '{arg.keyword.name}' given twice")
        if len(positional) > 2:
            raise ArgumentError(positional[2].span, f"{form.value} takes two sizes, IN and OUT")
        sizes: list[str | int] = ["in_features", "out_features"]
        for i, arg in enumerate(positional):
            sizes[i] = self._size(arg)
        has_bias = form is Gemm.LINEAR
        for arg in keywords:
            assert arg.keyword is not None
            if arg.keyword.name != "bias" or form is Gemm.MATMUL:
                allowed = "bias=true|false" if form is Gemm.LINEAR else "no keyword arguments"
                raise ArgumentError(
                    arg.keyword.span,
                    f"{form.value} has no argument '{arg.keyword.name}'",
                    f"{form.value} takes {allowed}",
                )
            value = arg.value
            if not (isinstance(value, Name) and value.name in ("true", "false")):
                raise ArgumentError(value.span, "bias= takes true or false")
            has_bias = value.name == "true"
        return form, sizes[0], sizes[1], has_bias

    def _size(self, arg: Argument) -> str | int:
        value = arg.value
        if isinstance(value, Name):
            self._check_name(value, "gemm size")
            return value.name
        if isinstance(value, Number) and value.value.is_integer() and value.value >= 1:
            return int(value.value)
        raise ArgumentError(
            value.span, "a gemm size is a name (a constructor argument) or a positive integer"
        )

    def _param(self, stmt: ParamStmt) -> None:
        self._check_operand_name(stmt.name)
        type_ = stmt.type.name
        default = stmt.default
        if type_ == "float":
            if stmt.size is not None:
                raise KindError(
                    stmt.size.span, "a float param has no size", "write `param NAME: float = 1.0`"
                )
            if isinstance(default, Name):
                raise ArgumentError(default.span, "a float param's default is a number")
            value = _number(default) if isinstance(default, Number) else None
            self._add_operand(
                Operand(stmt.name.name, Role.FLOAT, Kind.SCALAR, stmt.name.span, value)
            )
        elif type_ in ("vector", "scalar"):
            if type_ == "vector":
                if stmt.size is None:
                    raise KindError(
                        stmt.type.span, "a vector param needs its size", "write `vector[N]`"
                    )
                if stmt.size.name != "N":
                    raise KindError(
                        stmt.size.span,
                        f"a vector param has one value per output column: vector[N], not vector[{stmt.size.name}]",
                        "for per-row values, declare `input NAME: [M]`",
                    )
            elif stmt.size is not None:
                raise KindError(stmt.size.span, "a scalar param has no size")
            init: float | str
            if default is None:
                init = "randn" if type_ == "vector" else 1.0
            elif isinstance(default, Number):
                init = _number(default)
            elif default.name in _VALUE_INITS:
                init = default.name
            else:
                raise ArgumentError(
                    default.span,
                    f"unknown initialiser '{default.name}'",
                    did_you_mean(default.name, _VALUE_INITS)
                    or "use randn, zeros, ones or a number",
                )
            role, kind = (
                (Role.VECTOR, Kind.COL) if type_ == "vector" else (Role.SCALAR, Kind.SCALAR)
            )
            self._add_operand(Operand(stmt.name.name, role, kind, stmt.name.span, init))
        else:
            raise UnknownStatementError(
                stmt.type.span,
                f"unknown param type '{type_}'",
                did_you_mean(type_, ("float", "vector", "scalar"))
                or "use float, vector[N] or scalar",
            )

    def _input(self, stmt: InputStmt) -> None:
        self._check_operand_name(stmt.name)
        dims = tuple(d.name for d in stmt.dims)
        kinds = {("M", "N"): Kind.TILE, ("N",): Kind.COL, ("M",): Kind.ROW}
        kind = kinds.get(dims)
        if kind is None:
            bad = (
                stmt.dims[0]
                if len(stmt.dims) > 2
                else next((d for d in stmt.dims if d.name not in ("M", "N")), stmt.dims[-1])
            )
            raise KindError(
                bad.span,
                f"an input is [M, N], [N] or [M], not [{', '.join(dims)}]",
                "M is the batch dimension of x, N the output columns",
            )
        self._add_operand(Operand(stmt.name.name, Role.INPUT, kind, stmt.name.span))

    def _define(self, stmt: DefStmt) -> None:
        name = stmt.name
        if ops.lookup(name.name) is not None or name.name in ops.ROW_OPS:
            raise NameClashError(
                name.span, f"def '{name.name}' would hide the built-in op", "pick another name"
            )
        if name.name in self.defs:
            first = self.defs[name.name].stmt.name.span
            raise NameClashError(name.span, f"op '{name.name}' is already defined at {first}")
        seen: dict[str, Span] = {}
        for param in stmt.params:
            pname = param.name
            if pname.name in seen:
                raise NameClashError(pname.span, f"parameter '{pname.name}' appears twice")
            if pname.name == "acc":
                raise NameClashError(
                    pname.span, "'acc' is the value the op applies to; it cannot be a parameter"
                )
            if pname.name in self.operands:
                raise NameClashError(
                    pname.span,
                    f"parameter '{pname.name}' shadows the {self.operands[pname.name].role.value} declared at {self.operands[pname.name].span}",
                    "rename the parameter",
                )
            seen[pname.name] = pname.span
        with_default = None
        for param in stmt.params:
            if param.default is not None:
                with_default = param
            elif with_default is not None:
                raise ArgumentError(
                    param.span,
                    f"'{param.name.name}' needs a default: it follows '{with_default.name.name}', which has one",
                )
        self._check_def_body(stmt.body, len(self.defs))
        self.defs[name.name] = _DefInfo(stmt, len(self.defs))

    def _choice(
        self, stmt: Statement | None, what: str, choices: Sequence[str], default: str | None
    ) -> str | None:
        if stmt is None:
            return default
        word = stmt.dtype if isinstance(stmt, OutputStmt) else stmt.precision  # type: ignore[union-attr]
        if word.name not in choices:
            raise UnknownStatementError(
                word.span,
                f"unknown {what} '{word.name}'",
                did_you_mean(word.name, choices) or f"choose one of {', '.join(choices)}",
            )
        return word.name

    # -- names ---------------------------------------------------------------

    def _check_name(self, name: Name, what: str) -> None:
        why = name_problem(name.name)
        if why is not None:
            raise NameClashError(name.span, f"the {what} '{name.name}' {why}", "pick another name")

    def _check_operand_name(self, name: Name) -> None:
        n = name.name
        if n in ("acc", "x", "weight"):
            raise NameClashError(
                name.span, f"'{n}' is a name of the language and cannot be declared"
            )
        if n == "bias" and self.has_bias:
            raise NameClashError(
                name.span,
                "'bias' is the linear's own bias",
                "pick another name, or write `gemm: linear(IN, OUT, bias=false)`",
            )
        if n in self.operands:
            raise NameClashError(name.span, f"'{n}' is already declared at {self.operands[n].span}")
        if n in self.gemm_names:
            raise NameClashError(name.span, f"'{n}' is the name of a gemm size")
        if n != "bias":
            self._check_name(name, "name")

    def _add_operand(self, operand: Operand) -> None:
        self.operands[operand.name] = operand

    # -- IR building ---------------------------------------------------------

    def _emit(
        self,
        op: str,
        args: tuple[int, ...],
        kind: Kind,
        span: Span,
        attr: float | str | None = None,
        boolean: bool = False,
        hint: str = "",
        size: int = 0,
        keepdim: bool = True,
        pool: int = 1,
    ) -> Instr:
        self._tick(span)
        key = (op, args, attr, boolean, size, keepdim, pool)
        if key in self.cse:
            return self.body[self.cse[key]]
        row = ops.ROW_OPS[op].kind.value if op in ops.ROW_OPS else ""
        instr = Instr(
            len(self.body),
            op,
            args,
            kind,
            span,
            attr,
            boolean,
            hint or op,
            size,
            keepdim,
            pool,
            row,
        )
        self.body.append(instr)
        self.cse[key] = instr.id
        if op == "gemm":
            self.segment[instr.id] = 0
        elif op in ops.ROW_OPS:
            self.segment[instr.id] = instr.id
        else:
            self.segment[instr.id] = max((self.segment[a] for a in args), default=-1)
        return instr

    def _const(self, value: float, span: Span) -> Instr:
        return self._emit("const", (), Kind.SCALAR, span, float(value), hint="const")

    def _apply(self, opdef: ops.OpDef, args: list[Instr], span: Span) -> Instr:
        """`opdef` on `args` (already checked), folding constants where it can."""
        if opdef.name == "where" and args[0].op == "const":
            return args[1] if args[0].attr else args[2]
        if all(a.op == "const" for a in args):
            folded = _fold(opdef, [float(a.attr) for a in args])  # type: ignore[arg-type]
            if folded is not None:
                return self._emit(
                    "const", (), Kind.SCALAR, span, folded, boolean=opdef.boolean, hint="const"
                )
        kind = opdef.result_kind(args)
        pool = self._columns(args, kind, span)
        return self._emit(
            opdef.name, tuple(a.id for a in args), kind, span, boolean=opdef.boolean, pool=pool
        )

    def _columns(self, args: list[Instr], kind: Kind, span: Span) -> int:
        """The pool of an elementwise result (ir.Instr.pool), after checking that its
        arguments come from one segment and have the same columns."""
        segments = {self.segment[a.id] for a in args} - {-1}
        if len(segments) > 1:
            later = self.body[max(segments)]
            raise NotSupportedError(
                span,
                f"this combines a value from before the row operation '{later.op}' (at "
                f"{later.span}) with one from after it",
                "a value bound before a row operation cannot be used after it; "
                "recompute it, or apply it before the row operation",
            )
        segment = segments.pop() if segments else -1
        root = self.body[segment] if segment > 0 else None
        if kind is Kind.TILE and root is not None and ops.ROW_OPS[root.op].reduces:
            raise KindError(
                span,
                f"after '{root.op}' (at {root.span}) the value has one column per row; "
                "this would spread it over N columns",
                "combine it with numbers, floats, scalars and [M] vectors only",
            )
        pools = {a.pool for a in args if a.kind in (Kind.TILE, Kind.COL)}
        if len(pools) > 1:
            raise KindError(
                span,
                "this combines values with different numbers of columns: "
                + " and ".join("N" if p == 1 else f"N/{p}" for p in sorted(pools)),
                "after avgpool/maxpool(k) the value has N/k columns; [N] vectors and "
                "[M, N] inputs no longer fit it",
            )
        return pools.pop() if pools and kind is Kind.TILE else 1

    def _operand_value(self, name: str, span: Span) -> Instr:
        operand = self.operands[name]
        self.used_operands.add(name)
        if operand.role is Role.BIAS:
            self.bias_applied = True
        op = "arg" if operand.role is Role.FLOAT else "load"
        return self._emit(op, (), operand.kind, span, attr=name, hint=name)

    # -- epilogue ------------------------------------------------------------

    def _epilogue(self, stmt: EpilogueStmt, acc: Instr) -> Instr:
        env = _Env(acc=acc, bound={}, visible_defs=len(self.defs))
        for step in stmt.steps:
            self.step = step.span
            if isinstance(step, OpStep):
                env.acc = self._op_step(step, env)
            else:
                target = step.target
                value = self._expr(step.value, env)
                if value.boolean:
                    raise KindError(
                        step.value.span, "a comparison can only be where's first argument"
                    )
                if target.name == "acc":
                    env.acc = value
                    continue
                self._check_binding(target, env)
                env.bound[target.name] = (value, target.span)
        return env.acc

    def _check_binding(self, target: Name, env: _Env) -> None:
        n = target.name
        if n in env.bound:
            raise NameClashError(
                target.span,
                f"'{n}' is already bound at {env.bound[n][1]}",
                "bind each name once; use a new name for the new value",
            )
        if n in self.operands:
            operand = self.operands[n]
            what = (
                "an undeclared float, first used"
                if operand.implicit
                else f"a {operand.role.value}, declared"
            )
            raise NameClashError(target.span, f"'{n}' is already {what} at {operand.span}")
        if n in ("x", "weight", "bias") or n in self.gemm_names:
            raise NameClashError(target.span, f"'{n}' cannot be rebound")
        self._check_name(target, "name")

    def _op_step(self, step: OpStep, env: _Env) -> Instr:
        name = step.op.name
        if name in self.defs and self.defs[name].index < env.visible_defs:
            return self._call_def(self.defs[name], step.args, env.acc, step.span, env)
        if name in ops.ROW_OPS:
            return self._row_step(ops.ROW_OPS[name], step, env)
        opdef = self._lookup_op(step.op, env)
        if not opdef.step:
            raise UnknownOpError(
                step.op.span,
                f"'{name}' is an expression, not a step",
                f"write `acc = {name}(...)`",
            )
        return self._call_op(opdef, step.op, step.args, env.acc, step.span, env)

    def _lookup_op(self, name: Name, env: _Env) -> ops.OpDef:
        n = name.name
        opdef = ops.lookup(n)
        if opdef is not None:
            return opdef
        if n in ops.ROW_OPS:
            raise NotSupportedError(
                name.span,
                f"row operation '{n}' is a step of the epilogue, not a function",
                f"apply it to acc as a step: `epilogue: ...; {n}`",
            )
        if n in self.defs or n in self.later_defs:
            where = self.defs[n].stmt.name.span if n in self.defs else self.later_defs[n]
            raise UnknownOpError(
                name.span,
                f"op '{n}' is used before its def at {where}",
                "declare a def above the lines that use it",
            )
        hint = did_you_mean(n, [*ops.public_names(), *list(self.defs)[: env.visible_defs]])
        if hint is None and (n in self.operands or n in env.bound or n == "acc"):
            hint = f"'{n}' is a value, not an op; to multiply by it write mul({n})"
        raise UnknownOpError(name.span, f"unknown op '{n}'", hint)

    def _bind_args(
        self,
        what: str,
        params: Sequence[tuple[str, float | None]],
        args: tuple[Argument, ...],
        span: Span,
    ) -> list[Expr | float]:
        """Match call arguments to parameters: an expression or a default for each."""
        bound: dict[str, Expr] = {}
        seen_keyword = False
        names = [p for p, _ in params]
        for i, arg in enumerate(args):
            if arg.keyword is None:
                if seen_keyword:
                    raise ArgumentError(arg.span, "a positional argument after a keyword argument")
                if i >= len(params):
                    takes = (
                        "takes no arguments"
                        if not params
                        else f"takes at most {len(params)} argument{'s' if len(params) > 1 else ''} ({', '.join(names)})"
                    )
                    raise ArgumentError(arg.span, f"'{what}' {takes}")
                bound[names[i]] = arg.value
            else:
                seen_keyword = True
                key = arg.keyword.name
                if key not in names:
                    raise ArgumentError(
                        arg.keyword.span,
                        f"'{what}' has no argument '{key}'",
                        did_you_mean(key, names)
                        or (f"its arguments: {', '.join(names)}" if names else "it takes none"),
                    )
                if key in bound:
                    raise ArgumentError(arg.keyword.span, f"argument '{key}' given twice")
                bound[key] = arg.value
        result: list[Expr | float] = []
        for pname, default in params:
            if pname in bound:
                result.append(bound[pname])
            elif default is not None:
                result.append(default)
            else:
                raise ArgumentError(span, f"'{what}' needs argument '{pname}'")
        return result

    def _call_op(
        self,
        opdef: ops.OpDef,
        name: Name,
        args: tuple[Argument, ...],
        x: Instr | None,
        span: Span,
        env: _Env,
    ) -> Instr:
        """Apply a built-in op; `x` is acc for a step, None when called as a function."""
        params: list[tuple[str, float | None]] = [(p.name, p.default) for p in opdef.params]
        if x is None:
            params.insert(0, (opdef.x_name, None))
        exprs = self._bind_args(name.name, params, args, span)
        types = [p.type for p in opdef.params]
        if x is None:
            types.insert(0, opdef.x_type)
        values: list[Instr] = [] if x is None else [x]
        for (pname, _), expr, type_ in zip(params, exprs, types, strict=False):
            if isinstance(expr, float):
                values.append(self._const(expr, span))
                continue
            value = self._expr(expr, env, allow_compare=type_ is ops.ArgType.BOOL)
            self._check_kind(opdef, pname, type_, value, expr.span)
            values.append(value)
        if x is not None:
            self._check_kind(opdef, "x", opdef.x_type, x, span)
        implicit = [self._implicit(opdef, n, name.span) for n in opdef.implicit]
        return self._apply(opdef, [values[0], *implicit, *values[1:]], span)

    def _row_step(self, rowdef: ops.RowOpDef, step: OpStep, env: _Env) -> Instr:
        """A row operation on acc (LANGUAGE.md, "Row operations")."""
        name = step.op.name
        x = env.acc
        if x.kind not in (Kind.TILE, Kind.ROW):
            got = "a number" if x.kind is Kind.SCALAR else f"a {x.kind.value} value"
            raise KindError(
                step.op.span,
                f"'{name}' works on the rows of an [M, N] value; acc here is {got}",
                "apply row operations to a value that depends on the GEMM",
            )
        exprs = self._bind_args(name, rowdef.params, step.args, step.span)
        size, keepdim, args = 0, True, [x]
        for (pname, _), expr in zip(rowdef.params, exprs, strict=True):
            if pname in ("groups", "k"):
                size = self._positive_int(expr, name, pname, step.span)
            elif pname == "keepdim":
                keepdim = self._boolean(expr, name, step.span)
            elif isinstance(expr, float):
                args.append(self._const(expr, step.span))
            else:
                value = self._value(expr, env)
                self._check_kind_scalar(name, pname, value, expr.span)
                args.append(value)
        if rowdef.size == "k" and x.kind is Kind.ROW and size != 1:
            raise KindError(
                step.op.span,
                f"{name}({size}) of one column per row leaves no column",
                "a reduction before it left one value per row",
            )
        if rowdef.affine:
            if x.kind is Kind.ROW:
                raise NotSupportedError(
                    step.op.span,
                    f"'{name}' of the one value per row a reduction leaves is not supported",
                    "apply it before the reduction",
                )
            for part, init in (("weight", "ones"), ("bias", "zeros")):
                base = f"{name}_{part}"
                operand_name, n = base, 1
                while operand_name in self.operands or operand_name in RESERVED:
                    n += 1
                    operand_name = f"{name}{n}_{part}"
                self._add_operand(
                    Operand(operand_name, Role.VECTOR, Kind.COL, step.op.span, init, pool=x.pool)
                )
                self.used_operands.add(operand_name)
                args.append(
                    self._emit(
                        "load",
                        (),
                        Kind.COL,
                        step.op.span,
                        attr=operand_name,
                        hint=part,
                        pool=x.pool,
                    )
                )
        kind, pool = rowdef.result(x, size)
        return self._emit(
            name,
            tuple(a.id for a in args),
            kind,
            step.span,
            hint=name,
            size=size,
            keepdim=keepdim,
            pool=pool,
        )

    def _positive_int(self, expr: Expr | float, op: str, pname: str, span: Span) -> int:
        where = span if isinstance(expr, float) else expr.span
        if isinstance(expr, Number) and expr.value == int(expr.value) and 1 <= expr.value <= 2**20:
            return int(expr.value)
        raise ArgumentError(
            where,
            f"{op}'s '{pname}' must be a whole number from 1 to {2**20}",
            "it decides the kernel's layout, so it is fixed when the kernel is built",
        )

    def _boolean(self, expr: Expr | float, op: str, span: Span) -> bool:
        if isinstance(expr, float):
            return bool(expr)
        if isinstance(expr, Name) and expr.name in ("true", "false"):
            return expr.name == "true"
        raise ArgumentError(expr.span, f"{op}'s 'keepdim' must be true or false")

    def _check_kind_scalar(self, op: str, pname: str, value: Instr, span: Span) -> None:
        if value.kind is not Kind.SCALAR or value.boolean:
            got = "a comparison" if value.boolean else f"a {value.kind.value} value"
            raise KindError(span, f"{op}'s argument '{pname}' must be a scalar, got {got}")

    def _implicit(self, opdef: ops.OpDef, operand: str, span: Span) -> Instr:
        assert operand == "bias"
        if not self.has_bias:
            if self.gemm_form is Gemm.MATMUL:
                hint = "matmul has no bias; declare `param b: vector[N] = zeros` and use add(b)"
            else:
                hint = "remove 'bias', or drop bias=false from the gemm"
            raise UndefinedNameError(span, "this gemm has no bias", hint)
        self.bias_applied = True
        return self._operand_value("bias", span)

    def _check_kind(
        self, opdef: ops.OpDef, pname: str, type_: ops.ArgType, value: Instr, span: Span
    ) -> None:
        if type_.accepts(value):
            return
        if value.boolean:
            raise KindError(span, "a comparison can only be where's first argument")
        if type_ is ops.ArgType.BOOL:
            raise KindError(
                span, f"{opdef.name}'s first argument must be a comparison, like acc > 0"
            )
        got = "a scalar" if value.kind is Kind.SCALAR else f"a {value.kind.value} value"
        raise KindError(span, f"{opdef.name}'s argument '{pname}' must be {type_.value}, got {got}")

    def _call_def(
        self, info: _DefInfo, args: tuple[Argument, ...], x: Instr | None, span: Span, env: _Env
    ) -> Instr:
        stmt = info.stmt
        info.used = True
        params: list[tuple[str, float | None]] = [
            (p.name.name, _number(p.default) if p.default is not None else None)
            for p in stmt.params
        ]
        if x is None:
            params.insert(0, ("acc", None))
        exprs = self._bind_args(stmt.name.name, params, args, span)
        values: list[Instr] = [] if x is None else [x]
        for expr in exprs:
            if isinstance(expr, float):
                values.append(self._const(expr, span))
            else:
                value = self._expr(expr, env)
                if value.boolean:
                    raise KindError(expr.span, "a comparison can only be where's first argument")
                values.append(value)
        names = ["acc", *(p.name.name for p in stmt.params)]
        inner = _Env(
            acc=values[0],
            bound={},
            def_args=dict(zip(names, values, strict=False)),
            visible_defs=info.index,
        )
        self.inlining.append(span)
        try:
            return self._expr(stmt.body, inner)
        finally:
            self.inlining.pop()

    def _check_def_body(self, e: Expr, visible_defs: int) -> None:
        """Catch unknown ops in a def's body where it is written, even if it is never used."""
        if isinstance(e, Call):
            n = e.func.name
            if not (n in self.defs and self.defs[n].index < visible_defs):
                self._lookup_op(e.func, _Env(acc=self.body[0], bound={}, visible_defs=visible_defs))
            for arg in e.args:
                self._check_def_body(arg.value, visible_defs)
        elif isinstance(e, (BinOp, Compare)):
            self._check_def_body(e.left, visible_defs)
            self._check_def_body(e.right, visible_defs)
        elif isinstance(e, Neg):
            self._check_def_body(e.operand, visible_defs)

    # -- expressions ---------------------------------------------------------

    def _tick(self, span: Span) -> None:
        self.work += 1
        if self.work > MAX_OPERATIONS:
            inlined = " once its defs are inlined" if self.defs else ""
            raise LimitError(
                self.step or span,
                f"the epilogue is too large: more than {MAX_OPERATIONS} operations{inlined}",
                (
                    "each call of a def repeats its body: bind a value used more than once to a "
                    "name (`z = f(acc)`) and use the name"
                    if self.defs
                    else None
                ),
            )

    def _expr(self, e: Expr, env: _Env, allow_compare: bool = False) -> Instr:
        self._tick(e.span)
        if isinstance(e, Number):
            return self._const(_number(e), e.span)
        if isinstance(e, Name):
            return self._name(e, env)
        # The parser bounds how deeply an expression is written; defs inlined into
        # one another could still nest without bound (and recurse: a few frames a level).
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise depth_error(
                    self.inlining[0] if self.inlining else e.span, inlined=bool(self.inlining)
                )
            return self._operation(e, env, allow_compare)
        finally:
            self.depth -= 1

    def _operation(self, e: Expr, env: _Env, allow_compare: bool) -> Instr:
        if isinstance(e, Neg):
            return self._arith("neg", [self._value(e.operand, env)], e.span)
        if isinstance(e, BinOp):
            left, right = self._value(e.left, env), self._value(e.right, env)
            return self._arith(ops.BINARY_OPERATORS[e.op], [left, right], e.span)
        if isinstance(e, Compare):
            if not allow_compare:
                raise KindError(
                    e.span,
                    "a comparison can only be where's first argument",
                    f"write where({_text(self.text, e.span)}, a, b)",
                )
            left, right = self._value(e.left, env), self._value(e.right, env)
            return self._arith(ops.COMPARISONS[e.op], [left, right], e.span)
        assert isinstance(e, Call)
        return self._call(e, env)

    def _value(self, e: Expr, env: _Env) -> Instr:
        value = self._expr(e, env)
        if value.boolean:
            raise KindError(e.span, "a comparison can only be where's first argument")
        return value

    def _arith(self, op: str, args: list[Instr], span: Span) -> Instr:
        return self._apply(ops.OPS[op], args, span)

    def _call(self, call: Call, env: _Env) -> Instr:
        name = call.func.name
        if name in self.defs and self.defs[name].index < env.visible_defs:
            return self._call_def(self.defs[name], call.args, None, call.span, env)
        opdef = self._lookup_op(call.func, env)
        return self._call_op(opdef, call.func, call.args, None, call.span, env)

    def _name(self, name: Name, env: _Env) -> Instr:
        n = name.name
        if n == "acc":
            return env.acc
        if n in env.def_args:
            return env.def_args[n]
        if n in env.bound:
            return env.bound[n][0]
        if n in self.operands:
            return self._operand_value(n, name.span)
        if n in ("x", "weight"):
            raise UndefinedNameError(
                name.span,
                f"'{n}' is a GEMM operand; the epilogue sees only the product, acc",
            )
        if n in self.later:
            raise UndefinedNameError(
                name.span,
                f"'{n}' is used here but declared below, at {self.later[n]}",
                "declare vectors, scalars and inputs above the line that uses them",
            )
        if n == "bias":  # (with a bias, it is an operand and found above)
            raise UndefinedNameError(name.span, "this gemm has no bias")
        if n in self.gemm_names:
            raise UndefinedNameError(
                name.span, f"'{n}' is a gemm size, not a value in the epilogue"
            )
        # An undeclared name becomes a required float param (LANGUAGE.md), with a note.
        self._check_name(name, "name")
        self.notes.append(
            Diagnostic(name.span, f"'{n}' is not declared; it becomes a required float argument")
        )
        self._add_operand(Operand(n, Role.FLOAT, Kind.SCALAR, name.span, None, implicit=True))
        return self._operand_value(n, name.span)

    # -- the nn.Module's constructor -----------------------------------------

    def _init(
        self, stmt: Statement | None, in_f: str | int, out_f: str | int
    ) -> tuple[InitArg, ...]:
        # declared float and scalar params in the order they are written, then the
        # undeclared names in the order they are first used
        params = sorted(
            (o for o in self.operands.values() if o.role in (Role.FLOAT, Role.SCALAR)),
            key=lambda o: (o.implicit, o.span),
        )
        # one constructor argument per size name: linear(d, d) takes d once
        sizes = [(n, t) for n, t in ((in_f, "in"), (out_f, "out")) if isinstance(n, str)]
        sizes = [s for i, s in enumerate(sizes) if s[0] not in [n for n, _ in sizes[:i]]]
        if not isinstance(stmt, InitStmt):
            args = [InitArg(n, t) for n, t in sizes]
            args += [InitArg(p.name, "param", p.default) for p in params]
            return tuple(args)
        result: list[InitArg] = []
        seen: set[str] = set()
        for name in stmt.names:
            n = name.name
            if n in seen:
                raise NameClashError(name.span, f"'{n}' appears twice in init")
            seen.add(n)
            if n in self.gemm_names:
                result.append(InitArg(n, "in" if n == in_f else "out"))
            elif n in self.operands:
                operand = self.operands[n]
                if operand.role not in (Role.FLOAT, Role.SCALAR):
                    raise KindError(
                        name.span,
                        f"'{n}' is a {operand.role.value}; only float and scalar params take their value from init",
                    )
                result.append(InitArg(n, "param", operand.default))
            else:
                self._check_name(name, "init argument")
                self.notes.append(
                    Diagnostic(
                        name.span,
                        f"init argument '{n}' is used nowhere; ModelNew accepts and ignores it",
                    )
                )
                result.append(InitArg(n, "ignored"))
        for n, _ in sizes:
            if n not in seen:
                raise UndefinedNameError(stmt.span, f"init must include the gemm size '{n}'")
        for p in params:
            if p.role is Role.FLOAT and p.default is None and p.name not in seen:
                raise UndefinedNameError(
                    stmt.span,
                    f"the float param '{p.name}' has no default and is not in init",
                    "give it a default or add it to init",
                )
        return tuple(result)

    def _final_notes(self, epilogue: Statement | None) -> None:
        if self.has_bias and not self.bias_applied:
            span = (
                self.gemm_stmt.span
                if self.gemm_stmt is not None
                else (epilogue.span if epilogue is not None else Span.point(1, 1))
            )
            self.notes.append(
                Diagnostic(
                    span,
                    "the linear's bias is never applied; add the step 'bias' or write bias=false",
                )
            )
        for operand in self.operands.values():
            if operand.role is not Role.BIAS and operand.name not in self.used_operands:
                self.notes.append(
                    Diagnostic(operand.span, f"{operand.role.value} '{operand.name}' is never used")
                )


_STATEMENT_WORDS: dict[type, str] = {
    NameStmt: "name",
    GemmStmt: "gemm",
    InitStmt: "init",
    OutputStmt: "output",
    PrecisionStmt: "precision",
    EpilogueStmt: "epilogue",
}


def _text(text: str, span: Span) -> str:
    """The source text under a one-line span, each run of blanks one space."""
    lines = text.split("\n")
    if span.line != span.end_line or span.line > len(lines):
        return "..."
    return " ".join(lines[span.line - 1][span.column - 1 : span.end_column - 1].split())


def _number(number: Number) -> float:
    """A literal's value, which the kernel will use as an fp32 constant."""
    if not abs(number.value) <= _FP32_MAX:
        raise ArgumentError(
            number.span,
            f"the number {number.text} is too large for fp32 (largest: 3.4028235e38)",
        )
    return number.value


_FP32_MAX = float(torch.finfo(torch.float32).max)


def _fold(opdef: ops.OpDef, values: list[float]) -> float | None:
    """Evaluate an op on constants with its torch reference (float64), or None if non-finite."""
    tensors = [torch.tensor(v, dtype=torch.float64) for v in values]
    args: list[object] = []
    for t, type_ in zip(tensors, opdef.arg_types, strict=False):
        args.append(float(t) if type_ is ops.ArgType.SCALAR else t)
    result = float(opdef.reference(*args))
    if opdef.boolean:
        return 1.0 if result else 0.0
    return result if math.isfinite(result) else None


def _prune(body: list[Instr], result: int) -> tuple[tuple[Instr, ...], int]:
    """Drop values the result does not depend on (the gemm always stays); renumber."""
    live = {0, result}
    for instr in reversed(body):
        if instr.id in live:
            live.update(instr.args)
    ids = {old: new for new, old in enumerate(i.id for i in body if i.id in live)}
    pruned = tuple(
        replace(i, id=ids[i.id], args=tuple(ids[a] for a in i.args)) for i in body if i.id in live
    )
    return pruned, ids[result]


def analyze(tree: SpecTree, filename: str, text: str) -> Kernel:
    """Build and verify the IR of a parsed spec, or raise SpecError."""
    return _Analyzer(tree, filename, text).run()


__all__ = ["RESERVED", "SpecError", "analyze"]
