"""Stage 2 of the pipeline: syntax tree -> IR (`kgen.ir.Kernel`), as passes.

`analyze` below is the whole stage, read top to bottom. One module per concern, each
importing only those above it in this list:

    names         the names a spec may not use (`RESERVED`, `name_problem`): a leaf
    declarations  pass 1: the single statements (`Heading`), then the params, inputs
                  and defs (`Scope`), each name checked where it is declared
    builder       the SSA body as it is built: fold (constants) and CSE (value
                  numbering), applied to each value as it is made
    kinds         the checks: op signatures, kinds, row-operation segments and columns
    elaborate     pass 2: the epilogue -> SSA values: names resolved, kinds checked,
                  defs inlined, row operations applied
    prune         pass 3: the values the result does not depend on dropped
    signature     the operands in order, the nn.Module's constructor arguments, the
                  notes on what goes unused

kgen.verify checks the IR last. Every user mistake becomes a `SpecError` at its
position; what is legal but likely unintended (an undeclared name, a bias never
applied) becomes a note.
"""

from __future__ import annotations

from kgen.analyze.builder import Builder
from kgen.analyze.declarations import (
    around_epilogue,
    check_kernel_name,
    declare,
    note_unused_defs,
    open_scope,
    read_heading,
)
from kgen.analyze.elaborate import elaborate
from kgen.analyze.names import MODULE_ATTRIBUTES, RESERVED, name_problem
from kgen.analyze.prune import prune
from kgen.analyze.signature import constructor, note_unused, operands
from kgen.errors import SpecError
from kgen.ir import Kernel
from kgen.syntax import SpecTree
from kgen.verify import verify

# The most work (values evaluated or emitted, CSE hits included) one spec may take to
# analyze: each call of a def repeats its body, so a few lines of defs calling defs
# could otherwise ask for billions of operations (LANGUAGE.md).
MAX_OPERATIONS = 100_000


def analyze(tree: SpecTree, filename: str, text: str) -> Kernel:
    """Build and verify the IR of a parsed spec, or raise SpecError."""
    heading = read_heading(tree, filename)  # pass 1: name, gemm, init, output, precision
    values = Builder(MAX_OPERATIONS)  # the body, folding and sharing values as it grows
    acc = values.gemm()
    scope = open_scope(tree, heading)  # the bias and the float params, which count everywhere
    # a tensor or def counts below its line: declare those above the epilogue,
    # elaborate it (pass 2), then declare those below, so errors come in file order
    above, epilogue, below = around_epilogue(tree)
    declare(scope, above)
    result = acc if epilogue is None else elaborate(epilogue, acc, scope, values, text)
    declare(scope, below)
    note_unused_defs(scope)
    init = constructor(heading, scope)  # the nn.Module's arguments
    note_unused(heading, scope)  # a bias never applied, params and inputs never used
    check_kernel_name(heading, scope)  # no value's name, undeclared ones included
    body, result_id = prune(values.body, result.id)  # pass 3
    return verify(
        Kernel(
            name=heading.name,
            filename=heading.filename,
            source=text,
            gemm=heading.gemm,
            in_features=heading.in_features,
            out_features=heading.out_features,
            operands=operands(scope),
            init=init,
            body=body,
            result=result_id,
            output_dtype=heading.output,
            precision=heading.precision,
            notes=tuple(sorted(scope.notes, key=lambda d: d.span)),
        )
    )


__all__ = [
    "MAX_OPERATIONS",
    "MODULE_ATTRIBUTES",
    "RESERVED",
    "SpecError",
    "analyze",
    "name_problem",
]
