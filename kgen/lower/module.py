"""Stage 3b: the generated module around the kernels -- a header naming the spec and
kgen's version, the spec's text, the `kgen.tlib` helpers, the kernels
(kgen/lower/kernel.py), the declaration of the module's call (`_OP`, a
kgen.runtime.op.GemmOp), the function named after the kernel and `class
ModelNew(nn.Module)` (LANGUAGE.md, "What a generated module offers"). Unformatted:
kgen.build runs black."""

from __future__ import annotations

from kgen import __version__
from kgen.derive import Backward, NotDifferentiable, derive
from kgen.ir import Gemm, InitArg, Kernel, Kind, Role
from kgen.lower import steps
from kgen.lower.backward import backward_kernel, segment_sizes, windows
from kgen.lower.kernel import gemm_kernels, helpers
from kgen.lower.text import comment, literal, spec_lines

_TORCH_DTYPES = {
    "float16": "torch.float16",
    "bfloat16": "torch.bfloat16",
    "float32": "torch.float32",
}


# ---------------------------------------------------------------------------
# Python side: the call's declaration, the function, nn.Module. Everything a call does
# that the spec does not decide is kgen.runtime's (GemmOp), imported by the module.

_KINDS = {Kind.TILE: "tile", Kind.COL: "col", Kind.ROW: "row", Kind.SCALAR: "scalar"}


def _signature_args(kernel: Kernel) -> tuple[list[str], list[str]]:
    """(positional tensor names, keyword float params with defaults) of the function."""
    positional = (
        ["x", "weight"] + (["bias"] if kernel.has_bias else []) + [t.name for t in kernel.tensors]
    )
    keywords = []
    for f in kernel.floats:
        keywords.append(f.name if f.default is None else f"{f.name}={literal(float(f.default))}")
    return positional, keywords


def _backward(kernel: Kernel) -> Backward | str:
    """The kernel's backward, or why it has none."""
    try:
        return derive(kernel)
    except NotDifferentiable as error:
        where = f"{kernel.filename}:{error.span.line}:{error.span.column}"
        return f"{error.op} ({where}) has no derivative rule yet"


def _declaration(kernel: Kernel, backward: Backward | str) -> str:
    """`_OP`, the module's kgen.runtime.GemmOp: what the runtime needs to know of the
    spec to check, plan and launch a call, and to compute its gradients."""
    name = kernel.name
    lines = [
        "_OP = _runtime.GemmOp(",
        f"    {name!r},",
        f"    {name}_kernel,",
        f"    linear={kernel.gemm is Gemm.LINEAR},",
        f"    bias={kernel.has_bias},",
    ]
    if kernel.tensors:
        lines.append("    tensors=(")
        lines += [f"        ({t.name!r}, {_KINDS[t.kind]!r}, {t.pool})," for t in kernel.tensors]
        lines.append("    ),")
    if kernel.floats:
        lines.append("    floats=(")
        for f in kernel.floats:
            default = None if f.default is None else literal(float(f.default))
            lines.append(f"        ({f.name!r}, {default}),")
        lines.append("    ),")
    if kernel.output_dtype:
        lines.append(f"    out_dtype={_TORCH_DTYPES[kernel.output_dtype]},")
    if kernel.row_ops:
        columns, pool = kernel.output_columns()
        reduces = tuple(s.rowdef.reduces for s in steps.steps(kernel))
        lines += [
            "    rows=_runtime.Rows(",
            "        ops=(",
            *(f"            _runtime.RowOp{tuple(op)!r}," for op in steps.table(kernel)),
            "        ),",
            f"        stats={steps.stat_count(kernel)},",
            f"        finish={name + '_finish' if steps.finish_needed(kernel) else None},",
            f"        reduces={reduces!r},",
            f"        columns={columns!r},",
            f"        pool={pool},",
            "    ),",
        ]
    if isinstance(backward, str):
        lines.append(f"    no_backward={backward!r},")
    else:
        grads = tuple(name for name, i in backward.grads[1:] if i is not None)
        segments = segment_sizes(backward)
        chain = windows(backward)
        lines += [
            "    backward=_runtime.Backward(",
            f"        kernel={backward.kernel.name},",
            f"        grads={grads!r},",
            f"        saves={backward.saves_acc},",
            f"        rows={backward.rows},",
            *([f"        segments={segments!r},"] if any(segments) else []),
            *([f"        windows={chain!r},"] if chain else []),
            "    ),",
        ]
    lines += [
        f'    tuning_file=os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}.tuning.json"),',
        ")",
    ]
    return "\n".join(lines) + "\n"


def _function(kernel: Kernel) -> str:
    positional, keywords = _signature_args(kernel)
    sig = positional + (["*", *keywords] if keywords else [])
    call = ", ".join(positional + [f.name for f in kernel.floats])
    lines = [
        f"def {kernel.name}({', '.join(sig)}):",
        *_function_doc(kernel),
        f"    return _OP({call})",
    ]
    return "\n".join(lines) + "\n"


def _epilogue_text(kernel: Kernel) -> str:
    for line in spec_lines(kernel):
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("epilogue"):
            return comment(stripped.split(":", 1)[1].strip())
    return "(none)"


def _function_doc(kernel: Kernel) -> list[str]:
    in_f, out_f = kernel.in_features, kernel.out_features
    if kernel.gemm is Gemm.LINEAR:
        gemm = f"x[*, {in_f}] @ weight[{out_f}, {in_f}]^T"
    else:
        gemm = f"x[*, {in_f}] @ weight[{in_f}, {out_f}]"
    columns, pool = kernel.output_columns() if kernel.row_ops else ("N", 1)
    shape = {
        "N": f"[*, {out_f}]" if pool == 1 else f"[*, {out_f} // {pool}]",
        "1": "[*, 1]",
        "": "[*]",
    }[columns]
    out = kernel.output_dtype or "x's dtype"
    return [
        '    """' + f"{gemm} in fp32, then the epilogue `{_epilogue_text(kernel)}`.",
        "",
        f"    Returns a new {shape} tensor in {out} (`*`: x's leading dimensions). Built by kgen",
        f"    from {kernel.filename}.",
        '    """',
    ]


def _init_default(arg: InitArg, kernel: Kernel) -> str | None:
    if arg.target in ("in", "out"):
        return None
    if arg.target == "ignored":
        return "None"
    operand = kernel.operand(arg.name)
    if operand.role is Role.FLOAT:
        return None if operand.default is None else literal(float(operand.default))
    return literal(float(operand.default)) if isinstance(operand.default, float) else "None"


def _module_class(kernel: Kernel) -> str:
    args = list(kernel.init)
    defaults = [_init_default(a, kernel) for a in args]
    # Python needs defaults to be a suffix: drop any default before a required argument.
    required_seen = False
    for i in reversed(range(len(args))):
        if defaults[i] is None:
            required_seen = True
        elif required_seen:
            defaults[i] = None
    sig = ["self"] + [
        a.name if d is None else f"{a.name}={d}" for a, d in zip(args, defaults, strict=False)
    ]
    in_args = {a.name for a in args}
    in_f, out_f = str(kernel.in_features), str(kernel.out_features)
    body = ["        super().__init__()"]
    if kernel.gemm is Gemm.LINEAR:
        body += [
            f"        linear = nn.Linear({in_f}, {out_f}, bias={kernel.has_bias})",
            "        self.weight = linear.weight",
        ]
        if kernel.has_bias:
            body.append("        self.bias = linear.bias")
    else:
        body.append(f"        self.weight = nn.Parameter(torch.randn({in_f}, {out_f}))")
    for operand in kernel.operands:
        name = operand.name
        if operand.role is Role.VECTOR:
            init = operand.default
            size = out_f if operand.pool == 1 else f"{out_f} // {operand.pool}"
            if isinstance(init, str):
                body.append(f"        self.{name} = nn.Parameter(torch.{init}({size}))")
            else:
                value = literal(float(init))  # type: ignore[arg-type]
                body.append(f"        self.{name} = nn.Parameter(torch.full(({size},), {value}))")
        elif operand.role is Role.SCALAR:
            init = operand.default
            fallback = (
                f"torch.{init}(())"
                if isinstance(init, str)
                else f"torch.tensor({literal(float(init))})"  # type: ignore[arg-type]
            )
            if name in in_args and isinstance(init, str):
                value = f"{fallback} if {name} is None else torch.tensor(float({name}))"
            elif name in in_args:
                value = f"torch.tensor(float({name}))"
            else:
                value = fallback
            body.append(f"        self.{name} = nn.Parameter({value})")
        elif operand.role is Role.FLOAT:
            value = name if name in in_args else literal(float(operand.default))  # type: ignore[arg-type]
            body.append(f"        self.{name} = {value}")
    inputs = [t.name for t in kernel.tensors if t.role is Role.INPUT]

    def learned(name: str) -> str:
        return f'_params["{name}"] if "{name}" in _params else self.{name}'

    call = ["x", learned("weight")] + ([learned("bias")] if kernel.has_bias else [])
    call += [t.name if t.role is Role.INPUT else learned(t.name) for t in kernel.tensors]
    call += [f"self.{f.name}" for f in kernel.floats]
    lines = [
        "class ModelNew(nn.Module):",
        f'    """The {kernel.name} kernel as a module: seeded construction gives the same parameters',
        "    as the equivalent PyTorch module (nn.Linear first, then the spec's params in order).",
        '    """',
        "",
        f"    def __init__({', '.join(sig)}):",
        *body,
        "",
        f"    def forward({', '.join(['self', 'x', *inputs])}):",
        "        # parameters read from nn.Module's registry: `self.weight` goes through",
        "        # nn.Module.__getattr__ (~1 us each on a CI-class CPU, in a call of ~15);",
        "        # one moved out of it (torch.nn.utils.parametrize, a plain tensor",
        "        # assigned) is an attribute again",
        "        _params = self._parameters",
        f"        return _OP({', '.join(call)})",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The module


def _uses_torch(kernel: Kernel) -> bool:
    """Does the module name `torch` (an output dtype, or parameters ModelNew makes)?"""
    return bool(
        kernel.output_dtype
        or kernel.gemm is Gemm.MATMUL
        or any(o.role in (Role.VECTOR, Role.SCALAR) for o in kernel.operands)
    )


def emit_module(kernel: Kernel) -> str:
    """The generated module's source, before formatting."""
    spec = [f"# {kernel.filename}:"]
    spec += [f"# {i:>4} | {comment(line)}".rstrip() for i, line in enumerate(spec_lines(kernel), 1)]
    if len(spec) > 1 and spec[-1].endswith("|"):
        spec.pop()  # the empty line after a final newline
    parts = [
        f"# Generated by kgen {__version__} from {kernel.filename}. Do not edit: change the spec",
        "# and run `kgen build`.",
        "#",
        *spec,
        f'"""{kernel.name}: a fused GEMM + epilogue kernel generated by kgen."""',
        "",
        "import os",
        "",
        *(["import torch"] if _uses_torch(kernel) else []),
        "import triton",
        "import triton.language as tl",
        "from torch import nn",
        "",
        "import kgen.runtime.op as _runtime",
        "",
        "",
    ]
    backward = _backward(kernel)
    derived = [] if isinstance(backward, str) else [backward]
    sections = [
        helpers(kernel, *(b.kernel for b in derived)),
        gemm_kernels(kernel),
        *(backward_kernel(b) for b in derived),
        _declaration(kernel, backward),
        _function(kernel),
        _module_class(kernel),
    ]
    return "\n".join(parts) + "\n\n\n".join(s for s in sections if s) + "\n"
