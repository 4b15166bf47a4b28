"""Stage 2: syntax tree -> IR (kgen.analyze).

A corpus of semantic errors, each with its exception class, exact position and message;
then what a valid spec means: kinds, constant folding, shared and dead values, aliases,
`def` inlining, notes, the constructor's arguments and the IR listing.
"""

from __future__ import annotations

import ast
import builtins
import re

import pytest

import kgen.analyze
from kgen import ops
from kgen.analyze import MAX_OPERATIONS, analyze, name_problem
from kgen.build import compile_spec
from kgen.errors import (
    ArgumentError,
    FuseSyntaxError,
    KindError,
    LimitError,
    NameClashError,
    NotSupportedError,
    SpecError,
    UndefinedNameError,
    UnknownOpError,
    UnknownStatementError,
    format_error,
)
from kgen.ir import Gemm, InitArg, Instr, Kernel, Kind, Role, format_kernel
from kgen.syntax import MAX_DEPTH, parse


def kernel(text: str, filename: str = "k.fuse") -> Kernel:
    return analyze(parse(text), filename, text)


def error(text: str, filename: str = "k.fuse") -> SpecError:
    tree = parse(text)  # every case here is valid syntax
    with pytest.raises(SpecError) as info:
        analyze(tree, filename, text)
    return info.value


def op_names(k: Kernel) -> list[str]:
    return [i.op for i in k.body]


def only_instr(k: Kernel, op: str) -> Instr:
    found = [i for i in k.body if i.op == op]
    assert len(found) == 1, format_kernel(k)
    return found[0]


def result(k: Kernel) -> Instr:
    return k.body[k.result]


def arg(k: Kernel, instr: Instr, index: int) -> Instr:
    return k.body[instr.args[index]]


def notes(k: Kernel) -> list[tuple[int, int, str]]:
    return [(n.span.line, n.span.column, n.message) for n in k.notes]


# ---------------------------------------------------------------------------
# Semantic errors: class, exact position, message

SEMANTIC_ERRORS = [
    # -- ops and their arguments
    pytest.param(
        "epilogue: bias; sigmod", UnknownOpError, 1, 17, "unknown op 'sigmod'", id="unknown-op"
    ),
    pytest.param(
        "epilogue: bias; acc = 2 * sigmod(acc)",
        UnknownOpError,
        1,
        27,
        "unknown op 'sigmod'",
        id="unknown-function",
    ),
    pytest.param(
        "def f(a) = acc * sigmod(a)\nepilogue: bias",
        UnknownOpError,
        1,
        18,
        "unknown op 'sigmod'",
        id="unknown-op-in-unused-def",
    ),
    pytest.param(
        "param s: float = 1\nepilogue: bias; s",
        UnknownOpError,
        2,
        17,
        "unknown op 's'",
        id="value-as-step",
    ),
    pytest.param(
        "epilogue: bias; where(acc > 0, 1, 2)",
        UnknownOpError,
        1,
        17,
        "'where' is an expression, not a step",
        id="where-as-step",
    ),
    pytest.param(
        "epilogue: bias; acc = lt(acc, 0)", UnknownOpError, 1, 23, "'lt'", id="internal-op"
    ),
    pytest.param(
        "epilogue: bias; leaky_relu(slop=0.1)",
        ArgumentError,
        1,
        28,
        "'leaky_relu' has no argument 'slop'",
        id="unknown-keyword",
    ),
    pytest.param(
        "epilogue: bias; add(1, 2)",
        ArgumentError,
        1,
        24,
        "'add' takes at most 1 argument",
        id="too-many-arguments",
    ),
    pytest.param(
        "epilogue: bias; relu(1)",
        ArgumentError,
        1,
        22,
        "'relu' takes no arguments",
        id="arguments-to-relu",
    ),
    pytest.param(
        "epilogue: bias; acc = sigmoid(acc, acc)",
        ArgumentError,
        1,
        36,
        "'sigmoid' takes at most 1 argument",
        id="too-many-function-arguments",
    ),
    pytest.param(
        "epilogue: bias; add",
        ArgumentError,
        1,
        17,
        "'add' needs argument 'v'",
        id="missing-argument",
    ),
    pytest.param(
        "epilogue: bias; clamp(1)",
        ArgumentError,
        1,
        17,
        "'clamp' needs argument 'hi'",
        id="missing-second-argument",
    ),
    pytest.param(
        "epilogue: bias; acc = where(acc > 0, acc)",
        ArgumentError,
        1,
        23,
        "'where' needs argument 'b'",
        id="where-missing-argument",
    ),
    pytest.param(
        "epilogue: bias; clamp(lo=1, lo=2)",
        ArgumentError,
        1,
        29,
        "argument 'lo' given twice",
        id="duplicate-keyword",
    ),
    pytest.param(
        "epilogue: bias; clamp(lo=1, 2)",
        ArgumentError,
        1,
        29,
        "positional argument after a keyword",
        id="positional-after-keyword",
    ),
    pytest.param(
        "epilogue: bias; swish(1)",
        ArgumentError,
        1,
        23,
        "'swish' takes no arguments",
        id="arguments-to-alias",
    ),
    # -- kinds
    pytest.param(
        "param v: vector[N]\nepilogue: bias; residual(v)",
        KindError,
        2,
        26,
        "residual's argument 'r' must be an [M, N] value, got a [N] value",
        id="residual-of-vector",
    ),
    pytest.param(
        "input g: [M]\nepilogue: bias; residual(g)",
        KindError,
        2,
        26,
        "got a [M] value",
        id="residual-of-row-vector",
    ),
    pytest.param(
        "epilogue: bias; residual(2)", KindError, 1, 26, "got a scalar", id="residual-of-number"
    ),
    pytest.param(
        "param v: vector[N]\nepilogue: bias; hardtanh(v, 1)",
        KindError,
        2,
        26,
        "hardtanh's argument 'min' must be a scalar, got a [N] value",
        id="hardtanh-vector-bound",
    ),
    pytest.param(
        "epilogue: bias; leaky_relu(acc)",
        KindError,
        1,
        28,
        "leaky_relu's argument 'slope' must be a scalar",
        id="tile-slope",
    ),
    pytest.param(
        "epilogue: bias; add(acc > 0)",
        KindError,
        1,
        21,
        "a comparison can only be where's first argument",
        id="comparison-as-argument",
    ),
    pytest.param(
        "epilogue: bias; acc = acc > 0",
        KindError,
        1,
        23,
        "a comparison can only be where's first argument",
        id="comparison-bound-to-acc",
    ),
    pytest.param(
        "epilogue: bias; z = 1 + (acc < 2)",
        KindError,
        1,
        26,
        "a comparison can only be where's first argument",
        id="comparison-in-arithmetic",
    ),
    pytest.param(
        "epilogue: bias; acc = where(acc > 0, acc > 1, 2)",
        KindError,
        1,
        38,
        "a comparison can only be where's first argument",
        id="comparison-as-where-value",
    ),
    pytest.param(
        "def f() = acc > 0\nepilogue: bias; f",
        KindError,
        1,
        11,
        "a comparison can only be where's first argument",
        id="comparison-as-def-body",
    ),
    pytest.param(
        "epilogue: bias; acc = where(acc, 1, 2)",
        KindError,
        1,
        29,
        "where's first argument must be a comparison",
        id="where-without-comparison",
    ),
    # -- the gemm's bias
    pytest.param(
        "gemm: linear(a, b, bias=false)\nepilogue: bias; relu",
        UndefinedNameError,
        2,
        11,
        "this gemm has no bias",
        id="bias-step-with-bias-false",
    ),
    pytest.param(
        "gemm: matmul(a, b)\nepilogue: bias; relu",
        UndefinedNameError,
        2,
        11,
        "this gemm has no bias",
        id="bias-step-with-matmul",
    ),
    pytest.param(
        "gemm: linear(a, b, bias=false)\nepilogue: add(bias)",
        UndefinedNameError,
        2,
        15,
        "this gemm has no bias",
        id="bias-value-with-bias-false",
    ),
    # -- declarations and reserved names
    pytest.param(
        "param s: float = 1\nparam s: float = 2\nepilogue: bias; mul(s)",
        NameClashError,
        2,
        7,
        "'s' is already declared at 1:7",
        id="duplicate-param",
    ),
    pytest.param(
        "param r: float = 1\ninput r: [M, N]\nepilogue: bias; mul(r)",
        NameClashError,
        2,
        7,
        "'r' is already declared at 1:7",
        id="input-named-like-param",
    ),
    pytest.param(
        "param acc: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'acc' is a name of the language",
        id="param-acc",
    ),
    pytest.param(
        "param x: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'x' is a name of the language",
        id="param-x",
    ),
    pytest.param(
        "input weight: [M, N]\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'weight' is a name of the language",
        id="input-weight",
    ),
    pytest.param(
        "param bias: vector[N]\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'bias' is the linear's own bias",
        id="param-bias-with-linear-bias",
    ),
    pytest.param(
        "param lambda: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "the name 'lambda' is a Python keyword",
        id="param-python-keyword",
    ),
    pytest.param(
        "param match: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "the name 'match' is a Python keyword",
        id="param-python-soft-keyword",
    ),
    pytest.param(
        "param offs_m: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'offs_m' is used by the generated module",
        id="param-offs_m",
    ),
    pytest.param(
        "param BLOCK_M: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'BLOCK_M' is used by the generated module",
        id="param-BLOCK_M",
    ),
    pytest.param(
        "input pid: [M]\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'pid' is used by the generated module",
        id="input-pid",
    ),
    pytest.param(
        "param scale_ptr: vector[N]\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'scale_ptr' has a form ('*_ptr', 'stride_*')",
        id="param-ending-in-ptr",
    ),
    pytest.param(
        "param stride_k: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'stride_k' has a form",
        id="param-starting-with-stride",
    ),
    pytest.param(
        "param _s: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "starts with '_'",
        id="param-underscore",
    ),
    pytest.param(
        "param half: float = 1\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'half' is an attribute of torch.nn.Module",
        id="param-module-method-half",
    ),
    # `training` is an instance attribute of every nn.Module (set in its __init__),
    # not a class attribute: the generated `self.training = training` would clobber
    # the train/eval flag (and model.eval() would turn the float into False).
    pytest.param(
        "param training: float = 1\nepilogue: bias; mul(training)",
        NameClashError,
        1,
        7,
        "training",
        id="param-module-attribute-training",
    ),
    pytest.param(
        "epilogue: bias; mul(self)",
        NameClashError,
        1,
        21,
        "the name 'self' is used by the generated module",
        id="undeclared-reserved-name",
    ),
    pytest.param(
        "epilogue: bias; mul(x)",
        UndefinedNameError,
        1,
        21,
        "'x' is a GEMM operand",
        id="gemm-operand-as-value",
    ),
    pytest.param(
        "epilogue: bias; mul(in_features)",
        UndefinedNameError,
        1,
        21,
        "'in_features' is a gemm size",
        id="gemm-size-as-value",
    ),
    pytest.param(
        "gemm: linear(d_in, d_out)\nparam d_in: float = 1\nepilogue: bias",
        NameClashError,
        2,
        7,
        "'d_in' is the name of a gemm size",
        id="param-named-like-gemm-size",
    ),
    # -- param types and shapes
    pytest.param(
        "param s: float[N]\nepilogue: bias",
        KindError,
        1,
        16,
        "a float param has no size",
        id="float-size",
    ),
    pytest.param(
        "param s: float = randn\nepilogue: bias",
        ArgumentError,
        1,
        18,
        "a float param's default is a number",
        id="float-randn",
    ),
    pytest.param(
        "param v: vector\nepilogue: bias",
        KindError,
        1,
        10,
        "a vector param needs its size",
        id="vector-without-size",
    ),
    pytest.param(
        "param v: vector[M]\nepilogue: bias",
        KindError,
        1,
        17,
        "vector[N], not vector[M]",
        id="vector-M",
    ),
    pytest.param(
        "param v: vector[N] = rand\nepilogue: bias",
        ArgumentError,
        1,
        22,
        "unknown initialiser 'rand'",
        id="unknown-initialiser",
    ),
    pytest.param(
        "param t: scalar[N]\nepilogue: bias",
        KindError,
        1,
        17,
        "a scalar param has no size",
        id="scalar-size",
    ),
    pytest.param(
        "param t: int = 1\nepilogue: bias",
        UnknownStatementError,
        1,
        10,
        "unknown param type 'int'",
        id="unknown-param-type",
    ),
    pytest.param(
        "input r: [K]\nepilogue: bias",
        KindError,
        1,
        11,
        "an input is [M, N], [N] or [M], not [K]",
        id="input-K",
    ),
    pytest.param("input r: [N, M]\nepilogue: bias", KindError, 1, 14, "not [N, M]", id="input-N-M"),
    pytest.param(
        "input r: [M, N, K]\nepilogue: bias", KindError, 1, 11, "not [M, N, K]", id="input-3d"
    ),
    # -- single statements
    pytest.param(
        "gemm: linear(a, b)\ngemm: linear(a, b)\nepilogue: bias",
        NameClashError,
        2,
        1,
        "a second 'gemm' statement (the first is at 1:1)",
        id="second-gemm",
    ),
    pytest.param(
        "epilogue: bias\nname: k\nepilogue: relu",
        NameClashError,
        3,
        1,
        "a second 'epilogue' statement",
        id="second-epilogue",
    ),
    pytest.param(
        "output: float16\noutput: float32\nepilogue: bias",
        NameClashError,
        2,
        1,
        "a second 'output' statement",
        id="second-output",
    ),
    pytest.param(
        "gemm: conv(a, b)\nepilogue: bias",
        UnknownStatementError,
        1,
        7,
        "unknown gemm 'conv'",
        id="unknown-gemm",
    ),
    pytest.param(
        "output: float64\nepilogue: bias",
        UnknownStatementError,
        1,
        9,
        "unknown output dtype 'float64'",
        id="unknown-dtype",
    ),
    pytest.param(
        "precision: fp32\nepilogue: bias",
        UnknownStatementError,
        1,
        12,
        "unknown precision 'fp32'",
        id="unknown-precision",
    ),
    # -- the gemm's arguments
    pytest.param(
        "gemm: linear(0, 5)\nepilogue: bias",
        ArgumentError,
        1,
        14,
        "a gemm size is a name",
        id="gemm-size-zero",
    ),
    pytest.param(
        "gemm: linear(2.5, 8)\nepilogue: bias",
        ArgumentError,
        1,
        14,
        "a gemm size is a name",
        id="gemm-size-fraction",
    ),
    pytest.param(
        "gemm: linear(a, b, c)\nepilogue: bias",
        ArgumentError,
        1,
        20,
        "linear takes two sizes",
        id="gemm-three-sizes",
    ),
    pytest.param(
        "gemm: linear(a, b, bias=1)\nepilogue: bias",
        ArgumentError,
        1,
        25,
        "bias= takes true or false",
        id="gemm-bias-not-boolean",
    ),
    pytest.param(
        "gemm: linear(a, b, use_bias=true)\nepilogue: bias",
        ArgumentError,
        1,
        20,
        "linear has no argument 'use_bias'",
        id="gemm-unknown-keyword",
    ),
    pytest.param(
        "gemm: matmul(a, b, bias=false)\nepilogue: relu",
        ArgumentError,
        1,
        20,
        "matmul has no argument 'bias'",
        id="matmul-bias-keyword",
    ),
    pytest.param(
        "gemm: linear(a, b, bias=true, bias=false)\nepilogue: relu",
        ArgumentError,
        1,
        31,
        "bias",
        id="gemm-duplicate-keyword",
    ),
    pytest.param(
        "gemm: linear(bias=false, a, b)\nepilogue: relu",
        ArgumentError,
        1,
        26,
        "positional argument after a keyword",
        id="gemm-positional-after-keyword",
    ),
    # -- bindings
    pytest.param(
        "epilogue: bias; z = acc; z = 2 * acc",
        NameClashError,
        1,
        26,
        "'z' is already bound at 1:17",
        id="rebinding",
    ),
    pytest.param(
        "param s: float = 1\nepilogue: bias; s = acc",
        NameClashError,
        2,
        17,
        "'s' is already a float, declared at 1:7",
        id="binding-over-param",
    ),
    pytest.param(
        "epilogue: bias; mul(t); t = acc",
        NameClashError,
        1,
        25,
        "'t' is already an undeclared float",
        id="binding-over-undeclared-float",
    ),
    pytest.param(
        "epilogue: bias; x = acc", NameClashError, 1, 17, "'x' cannot be rebound", id="binding-x"
    ),
    pytest.param(
        "epilogue: bias; lambda = acc",
        NameClashError,
        1,
        17,
        "'lambda' is a Python keyword",
        id="binding-keyword",
    ),
    # -- defs
    pytest.param(
        "epilogue: bias; f\ndef f() = acc",
        UnknownOpError,
        1,
        17,
        "'f'",
        id="def-used-before-declared",
    ),
    pytest.param(
        "def g() = f(acc)\ndef f() = acc\nepilogue: bias; g",
        UnknownOpError,
        1,
        11,
        "'f'",
        id="def-uses-later-def",
    ),
    pytest.param(
        "def relu(a) = acc\nepilogue: bias",
        NameClashError,
        1,
        5,
        "def 'relu' would hide the built-in op",
        id="def-named-like-builtin",
    ),
    pytest.param(
        "def swish() = acc\nepilogue: bias",
        NameClashError,
        1,
        5,
        "def 'swish' would hide the built-in op",
        id="def-named-like-alias",
    ),
    pytest.param(
        "def softmax() = acc\nepilogue: bias",
        NameClashError,
        1,
        5,
        "def 'softmax' would hide the built-in op",
        id="def-named-like-row-op",
    ),
    pytest.param(
        "def f() = acc\ndef f() = 2 * acc\nepilogue: bias; f",
        NameClashError,
        2,
        5,
        "op 'f' is already defined at 1:5",
        id="def-twice",
    ),
    pytest.param(
        "def f(a, a) = acc\nepilogue: bias",
        NameClashError,
        1,
        10,
        "parameter 'a' appears twice",
        id="def-parameter-twice",
    ),
    pytest.param(
        "def f(acc) = acc\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'acc' is the value the op applies to",
        id="def-parameter-acc",
    ),
    pytest.param(
        "param s: float = 1\ndef f(s) = acc * s\nepilogue: bias; f(2)",
        NameClashError,
        2,
        7,
        "parameter 's' shadows the float declared at 1:7",
        id="def-parameter-shadows-param",
    ),
    pytest.param(
        "def f(a=1, b) = acc\nepilogue: bias",
        ArgumentError,
        1,
        12,
        "'b' needs a default",
        id="def-default-order",
    ),
    pytest.param(
        "def f() = acc\nepilogue: bias; f(1)",
        ArgumentError,
        2,
        19,
        "'f' takes no arguments",
        id="def-too-many-arguments",
    ),
    pytest.param(
        "def f(k) = acc * k\nepilogue: bias; f",
        ArgumentError,
        2,
        17,
        "'f' needs argument 'k'",
        id="def-missing-argument",
    ),
    pytest.param(
        "def f(k=1) = acc * k\nepilogue: bias; f(j=2)",
        ArgumentError,
        2,
        19,
        "'f' has no argument 'j'",
        id="def-unknown-keyword",
    ),
    # -- row operations: steps only, one segment at a time, columns that fit
    pytest.param(
        "epilogue: bias; acc = 2 * layernorm(acc)",
        NotSupportedError,
        1,
        27,
        "row operation 'layernorm' is a step of the epilogue, not a function",
        id="layernorm-in-expression",
    ),
    pytest.param(
        "def f() = acc - logsumexp(acc)\nepilogue: bias",
        NotSupportedError,
        1,
        17,
        "row operation 'logsumexp' is a step of the epilogue, not a function",
        id="row-op-in-unused-def",
    ),
    pytest.param(
        "epilogue: bias; z = acc; softmax; acc = acc + z",
        NotSupportedError,
        1,
        41,
        "from before the row operation 'softmax'",
        id="value-from-before-a-row-op",
    ),
    pytest.param(
        "epilogue: bias; maxpool(2); bias",
        KindError,
        1,
        29,
        "different numbers of columns: N and N/2",
        id="vector-after-pool",
    ),
    pytest.param(
        "input r: [M, N]\nepilogue: logsumexp; acc = acc + r",
        KindError,
        2,
        28,
        "one column per row",
        id="matrix-after-reduction",
    ),
    pytest.param(
        "epilogue: bias; groupnorm(2.5)",
        ArgumentError,
        1,
        27,
        "groupnorm's 'groups' must be a whole number",
        id="groupnorm-fraction",
    ),
    pytest.param(
        "epilogue: bias; groupnorm(g)",
        ArgumentError,
        1,
        27,
        "groupnorm's 'groups' must be a whole number",
        id="groupnorm-name",
    ),
    pytest.param(
        "epilogue: bias; avgpool(0)",
        ArgumentError,
        1,
        25,
        "avgpool's 'k' must be a whole number from 1",
        id="avgpool-zero",
    ),
    pytest.param(  # a literal past a float's range reads as inf (once an OverflowError)
        "epilogue: bias; avgpool(" + "3" * 400 + ")",
        ArgumentError,
        1,
        25,
        "avgpool's 'k' must be a whole number from 1",
        id="avgpool-beyond-float",
    ),
    pytest.param(
        "epilogue: bias; row_sum(keepdim=no)",
        ArgumentError,
        1,
        33,
        "row_sum's 'keepdim' must be true or false",
        id="keepdim-not-boolean",
    ),
    pytest.param(
        "epilogue: bias; softmax(2)",
        ArgumentError,
        1,
        25,
        "'softmax' takes no arguments",
        id="softmax-argument",
    ),
    pytest.param(
        "epilogue: row_mean; maxpool(2)",
        KindError,
        1,
        21,
        "maxpool(2) of one column per row leaves no column",
        id="pool-after-reduction",
    ),
    pytest.param(
        "epilogue: row_mean; groupnorm(1)",
        NotSupportedError,
        1,
        21,
        "'groupnorm' of the one value per row",
        id="groupnorm-after-reduction",
    ),
    pytest.param(
        "param b: vector[N] = ones\nepilogue: acc = b; softmax",
        KindError,
        2,
        20,
        "works on the rows of an [M, N] value; acc here is a [N] value",
        id="softmax-of-a-vector",
    ),
    pytest.param(
        "epilogue: bias; layernorm(eps=acc)",
        KindError,
        1,
        31,
        "layernorm's argument 'eps' must be a scalar",
        id="eps-not-scalar",
    ),
    # -- the constructor
    pytest.param(
        "gemm: linear(a, b)\ninit: a\nepilogue: bias",
        UndefinedNameError,
        2,
        1,
        "init must include the gemm size 'b'",
        id="init-missing-gemm-size",
    ),
    pytest.param(
        "gemm: linear(a, b)\nparam s: float\ninit: a, b\nepilogue: bias; mul(s)",
        UndefinedNameError,
        3,
        1,
        "the float param 's' has no default and is not in init",
        id="init-missing-required-float",
    ),
    pytest.param(
        "gemm: linear(a, b)\ninit: a, b\nepilogue: bias; mul(q)",
        UndefinedNameError,
        2,
        1,
        "the float param 'q' has no default and is not in init",
        id="init-missing-undeclared-float",
    ),
    pytest.param(
        "gemm: linear(a, b)\ninit: a, a, b\nepilogue: bias",
        NameClashError,
        2,
        10,
        "'a' appears twice in init",
        id="init-twice",
    ),
    pytest.param(
        "param v: vector[N]\ninit: in_features, out_features, v\nepilogue: bias; add(v)",
        KindError,
        2,
        34,
        "'v' is a vector; only float and scalar params take their value from init",
        id="init-vector",
    ),
    pytest.param(
        "gemm: linear(a, b)\ninit: a, b, self\nepilogue: bias",
        NameClashError,
        2,
        13,
        "the init argument 'self' is used by the generated module",
        id="init-reserved",
    ),
    # -- the kernel's name
    pytest.param(
        "name: class\nepilogue: bias",
        NameClashError,
        1,
        7,
        "the kernel name 'class' is a Python keyword",
        id="kernel-name-keyword",
    ),
    pytest.param(
        "name: x\nepilogue: bias",
        NameClashError,
        1,
        7,
        "the kernel name 'x' is used by the generated module",
        id="kernel-name-reserved",
    ),
    pytest.param(
        "name: foo\nparam foo: float = 1\nepilogue: bias; mul(foo)",
        NameClashError,
        1,
        7,
        "the kernel's name 'foo' is also the name of a value",
        id="kernel-name-is-a-param",
    ),
    pytest.param(
        "name: foo\ninput foo_kernel: [M, N]\nepilogue: bias; add(foo_kernel)",
        NameClashError,
        1,
        7,
        "the kernel's name 'foo' is also the name of a value",
        id="kernel-name-is-the-triton-kernel",
    ),
    # the generated module imports these: a kernel of that name would replace them
    pytest.param(
        "name: os\nepilogue: bias",
        NameClashError,
        1,
        7,
        "the kernel name 'os' is used by the generated module",
        id="kernel-name-os",
    ),
    pytest.param(
        "name: TensorDescriptor\nepilogue: bias",
        NameClashError,
        1,
        7,
        "'TensorDescriptor' is used by the generated module",
        id="kernel-name-TensorDescriptor",
    ),
    pytest.param(
        "param json: float = 1\nepilogue: bias; mul(json)",
        NameClashError,
        1,
        7,
        "the name 'json' is used by the generated module",
        id="param-json",
    ),
    # -- limits: nesting and size once defs are inlined (written nesting: test_parser)
    pytest.param(
        f"def f() = {'neg(' * 60}acc{')' * 60}\n"
        f"def g() = {'neg(' * 60}f(acc){')' * 60}\n"
        "epilogue: bias; relu; g",
        LimitError,
        3,
        23,
        f"expression nested too deeply once its defs are inlined: kgen handles at most {MAX_DEPTH}",
        id="defs-inlined-too-deep",
    ),
    pytest.param(
        f"def f() = {'neg(' * 60}acc{')' * 60}\n"
        f"epilogue: bias; z = acc; acc = z * {'neg(' * 60}f(z){')' * 60}",
        LimitError,
        2,
        276,
        "nested too deeply once its defs are inlined",
        id="def-call-inside-a-deep-expression",
    ),
    # each def calls the one before twice: 2^30 copies of f0's body, unless kgen stops
    pytest.param(
        "def f0() = acc + 1\n"
        + "".join(f"def f{i}() = f{i - 1}(acc) * f{i - 1}(acc)\n" for i in range(1, 31))
        + "epilogue: bias; relu; f30",
        LimitError,
        32,
        23,
        f"more than {MAX_OPERATIONS} operations once its defs are inlined",
        id="defs-grow-too-large",
    ),
    pytest.param(
        "def f0(a) = a\n"
        + "".join(f"def f{i}(a) = f{i - 1}(acc, f{i - 1}(acc, a))\n" for i in range(1, 40))
        + "epilogue: bias; z = f39(acc, acc)",
        LimitError,
        41,
        17,
        "operations once its defs are inlined",
        id="defs-that-emit-nothing-grow-too-large",
    ),
]


@pytest.mark.parametrize(("text", "cls", "line", "column", "fragment"), SEMANTIC_ERRORS)
def test_semantic_error(
    text: str, cls: type[SpecError], line: int, column: int, fragment: str
) -> None:
    err = error(text)
    assert type(err) is cls, (type(err).__name__, err.span, err.message)
    assert (err.span.line, err.span.column) == (line, column), err.message
    assert fragment in err.message


@pytest.mark.parametrize("op", sorted(ops.ROW_OPS))
def test_every_row_operation_is_a_step_not_a_function(op: str) -> None:
    err = error(f"name: k\nepilogue: bias; acc = relu({op}(acc))")
    assert type(err) is NotSupportedError
    assert (err.span.line, err.span.column) == (2, 28)
    assert err.span.end_column == 28 + len(op)
    assert f"'{op}' is a step" in err.message


# The generated module calls these builtins itself (isinstance and tuple in _check_tensor,
# max in _config, list, TypeError and ValueError when it reports a bad argument): a kernel
# function of that name replaces the builtin for the whole module, so every call of the
# kernel (or every bad call) then fails with a confusing TypeError.
@pytest.mark.parametrize("name", ["isinstance", "max", "tuple", "list", "TypeError", "ValueError"])
def test_kernel_name_that_shadows_a_builtin_the_module_uses(name: str) -> None:
    err = error(f"name: {name}\nepilogue: bias")
    assert type(err) is NameClashError
    assert (err.span.line, err.span.column) == (1, 7)
    assert name in err.message


# ---------------------------------------------------------------------------
# Hints


def test_unknown_op_suggests_the_closest_op() -> None:
    err = error("epilogue: bias; sigmod")
    assert err.hint == "did you mean 'sigmoid'?"
    first = format_error("k.fuse", "epilogue: bias; sigmod", err).splitlines()[0]
    assert first == "k.fuse:1:17: error: unknown op 'sigmod' (did you mean 'sigmoid'?)"


def test_unknown_op_suggests_a_def() -> None:
    err = error("def swish_beta(b) = acc * sigmoid(b * acc)\nepilogue: bias; swish_bta(2)")
    assert type(err) is UnknownOpError
    assert err.hint == "did you mean 'swish_beta'?"


def test_unknown_keyword_suggests_the_closest_parameter() -> None:
    err = error("epilogue: bias; softplus(bta=2)")
    assert err.hint == "did you mean 'beta'?"


def test_unknown_keyword_lists_the_parameters() -> None:
    err = error("def f(k=1) = acc * k\nepilogue: bias; f(j=2)")
    assert err.hint is not None and "k" in err.hint


def test_value_used_as_a_step_hints_mul() -> None:
    err = error("param s: float = 1\nepilogue: bias; s")
    assert err.hint is not None and "mul(s)" in err.hint


def test_comparison_outside_where_hints_where() -> None:
    err = error("epilogue: bias; add(acc > 0)")
    assert err.hint == "write where(acc > 0, a, b)"


def test_comparison_hint_shows_the_comparison_on_one_line() -> None:
    err = error("epilogue: bias; add(acc\t>\x0c\r0)")
    assert err.hint == "write where(acc > 0, a, b)"


def test_unknown_initialiser_suggests_the_closest() -> None:
    err = error("param v: vector[N] = rand\nepilogue: bias; add(v)")
    assert err.hint == "did you mean 'randn'?"


def test_too_large_without_defs_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kgen.analyze, "MAX_OPERATIONS", 1000)  # (the real one is slow to reach)
    text = "epilogue: bias" + "; add(1)" * 500
    err = error(text)
    assert type(err) is LimitError
    assert err.message == "the epilogue is too large: more than 1000 operations"
    # at the step that went over: about the 333rd, 3 operations each
    assert err.span.line == 1 and text[err.span.column - 1 :].startswith("add(1)")
    assert 300 < text[: err.span.column].count(";") < 340
    assert err.hint is None


def test_bias_with_matmul_hints_a_vector_param() -> None:
    err = error("gemm: matmul(a, b)\nepilogue: bias")
    assert err.hint is not None and "matmul has no bias" in err.hint


@pytest.mark.parametrize(
    ("word", "text", "suggestion"),
    [
        ("precision", "precision: tf23\nepilogue: bias", "tf32"),
        ("output", "output: float61\nepilogue: bias", "float16"),
        ("gemm", "gemm: lineer(a, b)\nepilogue: bias", "linear"),
        ("param type", "param s: flaot = 1\nepilogue: bias", "float"),
    ],
)
def test_unknown_words_suggest_the_closest_choice(word: str, text: str, suggestion: str) -> None:
    err = error(text)
    assert type(err) is UnknownStatementError, word
    assert err.hint == f"did you mean '{suggestion}'?"


# ---------------------------------------------------------------------------
# The kernel's name from the file name


@pytest.mark.parametrize(
    ("filename", "stem", "suggestion"),
    [
        ("my-kernel.fuse", "my-kernel", "my_kernel"),
        ("specs/my-kernel.fuse", "my-kernel", "my_kernel"),
        ("2fast.fuse", "2fast", "k_2fast"),
        ("class.fuse", "class", None),
        ("_private.fuse", "_private", None),
        ("x.fuse", "x", None),
        ("training_ptr.fuse", "training_ptr", None),
    ],
)
def test_file_stem_that_is_not_a_kernel_name(
    filename: str, stem: str, suggestion: str | None
) -> None:
    text = "epilogue: bias\n"
    with pytest.raises(SpecError) as info:
        compile_spec(text, filename)
    err = info.value
    assert type(err) is NameClashError
    assert (err.span.line, err.span.column) == (1, 1)
    assert f"the file name '{stem}'" in err.message
    # the hint names a kernel name that works
    assert err.hint is not None
    found = re.fullmatch(r"add a line `name: (\w+)`", err.hint)
    assert found is not None, err.hint
    if suggestion is not None:
        assert found.group(1) == suggestion
    assert compile_spec(f"name: {found.group(1)}\n" + text, filename).kernel.name == found.group(1)


def test_name_statement_rescues_a_bad_file_stem() -> None:
    compiled = compile_spec("name: my_kernel\nepilogue: bias\n", "specs/my-kernel.fuse")
    assert compiled.kernel.name == "my_kernel"
    assert compiled.kernel.filename == "my-kernel.fuse"


def test_kernel_name_defaults_to_the_file_stem() -> None:
    k = kernel("epilogue: bias", "specs/foo_bar.fuse")
    assert k.name == "foo_bar"
    assert k.filename == "foo_bar.fuse"


# ---------------------------------------------------------------------------
# Kinds


def test_vector_plus_tile_is_a_tile() -> None:
    k = kernel("param v: vector[N]\nepilogue: bias; acc = v + acc")
    add = result(k)
    assert add.op == "add"
    assert add.kind is Kind.TILE
    assert arg(k, add, 0).op == "load" and arg(k, add, 0).kind is Kind.COL


def test_row_input_times_column_vector_is_a_tile() -> None:
    k = kernel("input g: [M]\nparam v: vector[N]\nepilogue: acc = g * v")
    mul = result(k)
    assert (mul.op, mul.kind) == ("mul", Kind.TILE)
    assert [arg(k, mul, i).kind for i in (0, 1)] == [Kind.ROW, Kind.COL]


def test_vector_arithmetic_keeps_its_kind() -> None:
    k = kernel("param v: vector[N]\ninput g: [M]\nepilogue: bias; acc = acc * (v * 2) + g / 4")
    row = only_instr(k, "div")
    assert row.kind is Kind.ROW
    assert arg(k, row, 0).attr == "g"
    column = [i for i in k.body if i.op == "mul" and i.kind is Kind.COL]
    assert len(column) == 1
    assert arg(k, column[0], 0).attr == "v"


def test_scalars_stay_scalar() -> None:
    k = kernel("param s: float = 2\nparam t: scalar = 3\nepilogue: bias; acc = acc * (s * t)")
    inner = [i for i in k.body if i.op == "mul" and i.kind is Kind.SCALAR]
    assert len(inner) == 1
    assert [arg(k, inner[0], i).op for i in (0, 1)] == ["arg", "load"]
    assert result(k).kind is Kind.TILE


def test_operand_kinds_and_roles() -> None:
    k = kernel(
        "param s: float = 2\nparam t: scalar = 3\nparam v: vector[N]\n"
        "input r: [M, N]\ninput g: [M]\ninput c: [N]\n"
        "epilogue: bias; mul(s); mul(t); add(v); residual(r); add(g); add(c)"
    )
    got = {o.name: (o.role, o.kind) for o in k.operands}
    assert got == {
        "bias": (Role.BIAS, Kind.COL),
        "s": (Role.FLOAT, Kind.SCALAR),
        "t": (Role.SCALAR, Kind.SCALAR),
        "v": (Role.VECTOR, Kind.COL),
        "r": (Role.INPUT, Kind.TILE),
        "g": (Role.INPUT, Kind.ROW),
        "c": (Role.INPUT, Kind.COL),
    }
    assert [o.name for o in k.tensors] == ["t", "v", "r", "g", "c"]
    assert [o.name for o in k.floats] == ["s"]
    assert only_instr(k, "arg").attr == "s"


def test_comparison_of_row_and_column_is_a_boolean_tile() -> None:
    k = kernel("input g: [M]\nparam v: vector[N]\nepilogue: bias; acc = where(g > v, acc, 0)")
    gt = only_instr(k, "gt")
    assert gt.boolean and gt.kind is Kind.TILE
    where = result(k)
    assert where.op == "where" and not where.boolean
    assert where.args[0] == gt.id


def test_result_may_be_a_scalar_or_a_vector() -> None:
    k = kernel("param v: vector[N]\nepilogue: acc = v")
    assert result(k).op == "load" and result(k).kind is Kind.COL
    k = kernel("epilogue: acc = 1")
    assert result(k).op == "const" and result(k).kind is Kind.SCALAR
    assert k.body[0].op == "gemm"


# ---------------------------------------------------------------------------
# Constant folding


def test_constant_subexpression_is_folded() -> None:
    k = kernel("epilogue: bias; acc = acc * (2 * 3)")
    mul = result(k)
    assert mul.op == "mul"
    assert arg(k, mul, 1).op == "const" and arg(k, mul, 1).attr == 6.0
    assert [i.attr for i in k.body if i.op == "const"] == [6.0]


def test_functions_of_constants_are_folded() -> None:
    k = kernel("epilogue: bias; acc = acc + exp(0) - sigmoid(0) * -(-4)")
    assert "exp" not in op_names(k)
    assert "sigmoid" not in op_names(k)
    assert "neg" not in op_names(k)
    consts = sorted(i.attr for i in k.body if i.op == "const")  # type: ignore[type-var]
    assert consts == [1.0, 2.0]  # exp(0), and sigmoid(0) * 4


def test_builtin_defaults_become_constants() -> None:
    k = kernel("epilogue: bias; hardtanh")
    clamp = only_instr(k, "hardtanh")
    assert [arg(k, clamp, i).attr for i in (1, 2)] == [-1.0, 1.0]


def test_where_with_a_constant_condition_picks_a_branch() -> None:
    k = kernel("epilogue: bias; acc = where(1 > 0, acc, 2 * acc)")
    assert "where" not in op_names(k)
    assert "gt" not in op_names(k)
    assert result(k).op == "bias"
    k = kernel("epilogue: bias; acc = where(1 < 0, acc, 2 * acc)")
    assert result(k).op == "mul"


def test_a_constant_condition_picks_its_branch_before_the_checks() -> None:
    """Folding happens as values are built: the branch a constant condition rules out
    is never checked, so a def may offer one that does not fit every call."""
    spec = "input r: [M, N]\ndef f(s=1) = where(s > 0, acc, r)\nepilogue: bias; maxpool(2); acc = f(acc)"
    assert result(kernel(spec)).op == "maxpool"
    err = error(spec.replace("f(acc)", "where(acc > 0, acc, r)"))
    assert type(err) is KindError and "different numbers of columns" in err.message


def test_non_finite_results_are_not_folded() -> None:
    k = kernel("epilogue: bias; acc = acc + log(0)")
    log = only_instr(k, "log")
    assert arg(k, log, 0).op == "const" and arg(k, log, 0).attr == 0.0


def test_floats_are_runtime_values_not_constants() -> None:
    k = kernel("param s: float = 2\nepilogue: bias; acc = acc * (s * 3)")
    inner = [i for i in k.body if i.op == "mul" and i.kind is Kind.SCALAR]
    assert len(inner) == 1
    assert arg(k, inner[0], 1).attr == 3.0


# ---------------------------------------------------------------------------
# Shared and dead values


def test_common_subexpression_is_computed_once() -> None:
    k = kernel("epilogue: bias; acc = sigmoid(acc) + sigmoid(acc)")
    sigmoid = only_instr(k, "sigmoid")
    add = result(k)
    assert add.op == "add"
    assert add.args == (sigmoid.id, sigmoid.id)


def test_equal_row_operations_are_one_value() -> None:
    """Values are shared as they are built, before the segment check: one row operation
    of one value, written twice, is one value, so what follows either may mix."""
    k = kernel("epilogue: bias; g = acc; softmax; h = acc; acc = g; softmax; acc = acc + h")
    softmax = only_instr(k, "softmax")
    assert result(k).args == (softmax.id, softmax.id)
    err = error("epilogue: bias; g = acc; softmax; h = acc; acc = g; log_softmax; acc = acc + h")
    assert type(err) is NotSupportedError


def test_an_operand_is_loaded_once() -> None:
    k = kernel(
        "param v: vector[N]\nparam s: float = 2\nepilogue: bias; add(v); mul(s); add(v); mul(s)"
    )
    assert op_names(k).count("add") == 2
    assert op_names(k).count("mul") == 2
    assert len([i for i in k.body if i.op == "load" and i.attr == "v"]) == 1
    assert len([i for i in k.body if i.op == "arg"]) == 1


def test_dead_values_are_dropped() -> None:
    k = kernel("epilogue: bias; z = exp(acc); u = relu(z); sigmoid")
    assert op_names(k) == ["gemm", "load", "bias", "sigmoid"]
    assert [i.id for i in k.body] == [0, 1, 2, 3]
    assert k.result == 3
    assert result(k).args == (2,)


def test_overwritten_acc_is_dropped_but_the_gemm_stays() -> None:
    k = kernel("param v: vector[N]\nepilogue: bias; relu; acc = v")
    assert op_names(k) == ["gemm", "load"]
    assert result(k).attr == "v"


def test_values_kept_through_a_binding() -> None:
    k = kernel("epilogue: bias; z = acc; relu; acc = acc + 0.1 * z")
    add = result(k)
    assert add.op == "add"
    scaled = arg(k, add, 1)
    assert scaled.op == "mul"
    assert arg(k, scaled, 1).op == "bias"


# ---------------------------------------------------------------------------
# Aliases and defs


def test_aliases_become_their_targets() -> None:
    k = kernel("epilogue: bias; swish; scale(2); acc = swish(acc)")
    assert op_names(k) == ["gemm", "load", "bias", "silu", "const", "mul", "silu"]
    assert "swish" not in format_kernel(k)
    assert "scale" not in format_kernel(k)


def test_def_is_inlined_with_default_and_given_arguments() -> None:
    k = kernel("def twice(k=2) = acc * k\nepilogue: bias; twice; twice(3)")
    assert "twice" not in op_names(k)
    muls = [i for i in k.body if i.op == "mul"]
    assert [arg(k, m, 1).attr for m in muls] == [2.0, 3.0]
    assert arg(k, muls[0], 0).op == "bias"
    assert muls[1].args[0] == muls[0].id
    # the inlined instructions point at the def's body
    assert (muls[0].span.line, muls[0].span.column) == (1, 18)


def test_def_called_as_a_function_and_from_another_def() -> None:
    k = kernel(
        "def f(k) = acc * k\ndef g() = f(acc, 3) + 1\nepilogue: bias; g; acc = f(relu(acc), k=4)"
    )
    assert op_names(k) == [
        "gemm",
        "load",
        "bias",
        "const",
        "mul",
        "const",
        "add",
        "relu",
        "const",
        "mul",
    ]
    last = result(k)
    assert arg(k, last, 0).op == "relu"
    assert arg(k, last, 1).attr == 4.0


def test_def_sees_its_own_names_not_the_epilogues() -> None:
    # `z` inside the def is not the epilogue's binding: it is an undeclared float
    k = kernel("def f() = acc * z\nepilogue: bias; z = acc; f")
    z = k.operand("z")
    assert z.role is Role.FLOAT and z.implicit
    assert (z.span.line, z.span.column) == (1, 17)


# ---------------------------------------------------------------------------
# Notes


def test_undeclared_name_becomes_a_required_float_with_a_note() -> None:
    k = kernel("epilogue: bias; sigmoid_residual(scale); add(scale)")
    scale = k.operand("scale")
    assert (scale.role, scale.kind, scale.default, scale.implicit) == (
        Role.FLOAT,
        Kind.SCALAR,
        None,
        True,
    )
    assert (scale.span.line, scale.span.column) == (1, 34)
    assert notes(k) == [(1, 34, "'scale' is not declared; it becomes a required float argument")]
    assert all(n.severity == "note" for n in k.notes)


def test_bias_never_applied_is_a_note_at_the_gemm() -> None:
    k = kernel("name: k\ngemm: linear(a, b)\nepilogue: relu")
    assert notes(k) == [
        (2, 1, "the linear's bias is never applied; add the step 'bias' or write bias=false")
    ]


def test_bias_never_applied_without_gemm_is_a_note_at_the_epilogue() -> None:
    k = kernel("name: k\n\nepilogue: relu")
    assert [(line, col) for line, col, _ in notes(k)] == [(3, 1)]
    assert "bias is never applied" in notes(k)[0][2]


def test_no_bias_note_when_it_is_applied_or_absent() -> None:
    assert notes(kernel("epilogue: bias; relu")) == []
    assert notes(kernel("gemm: linear(a, b, bias=false)\nepilogue: relu")) == []
    assert notes(kernel("gemm: matmul(a, b)\nepilogue: relu")) == []


def test_unused_def_param_and_input_are_notes() -> None:
    k = kernel(
        "def nope() = acc\nparam p: float = 1\nparam v: vector[N]\n"
        "param t: scalar\ninput r: [M, N]\nepilogue: bias"
    )
    assert notes(k) == [
        (1, 5, "def 'nope' is never used"),
        (2, 7, "float 'p' is never used"),
        (3, 7, "vector 'v' is never used"),
        (4, 7, "scalar 't' is never used"),
        (5, 7, "input 'r' is never used"),
    ]


def test_ignored_init_argument_is_a_note() -> None:
    k = kernel("init: in_features, out_features, dropout_p\nepilogue: bias")
    assert k.init[-1] == InitArg("dropout_p", "ignored")
    assert notes(k) == [
        (1, 34, "init argument 'dropout_p' is used nowhere; ModelNew accepts and ignores it")
    ]


def test_notes_are_sorted_by_position() -> None:
    k = kernel(
        "param v: vector[N]\ngemm: linear(a, b)\n\nepilogue: relu; mul(s)\ninit: a, b, s, zz"
    )
    assert [(line, col) for line, col, _ in notes(k)] == [(1, 7), (2, 1), (4, 21), (5, 16)]


# ---------------------------------------------------------------------------
# Declaration order


def test_float_param_may_be_declared_after_the_epilogue() -> None:
    # LANGUAGE.md: statement order is free, except that vectors and inputs must be
    # declared before a def or epilogue line uses them. A float param is neither.
    k = kernel("epilogue: bias; mul(s)\nparam s: float = 3")
    s = k.operand("s")
    assert s.default == 3.0
    assert not s.implicit
    assert notes(k) == []


def test_vector_used_before_its_declaration_is_an_error() -> None:
    with pytest.raises(SpecError) as info:
        kernel("epilogue: bias; add(v)\nparam v: vector[N]")
    err = info.value
    assert not isinstance(err, FuseSyntaxError)
    # the error leads to the use, 1:21, by its position or in its message
    assert (err.span.line, err.span.column) == (1, 21) or "1:21" in err.message


# ---------------------------------------------------------------------------
# The constructor's arguments


def test_default_init_is_gemm_sizes_then_float_and_scalar_params() -> None:
    k = kernel(
        "gemm: linear(d_in, d_out)\nparam p: float = 1\nparam v: vector[N]\n"
        "param t: scalar = 3\nparam q: float\ninput r: [M, N]\n"
        "epilogue: bias; mul(p); add(v); mul(t); mul(q); residual(r); mul(u)"
    )
    assert k.init == (
        InitArg("d_in", "in"),
        InitArg("d_out", "out"),
        InitArg("p", "param", 1.0),
        InitArg("t", "param", 3.0),
        InitArg("q", "param", None),
        InitArg("u", "param", None),
    )


def test_default_init_names_default_sizes() -> None:
    k = kernel("epilogue: bias")
    assert k.init == (InitArg("in_features", "in"), InitArg("out_features", "out"))
    assert (k.in_features, k.out_features) == ("in_features", "out_features")


def test_integer_gemm_sizes_are_not_constructor_arguments() -> None:
    k = kernel("gemm: linear(16, 32)\nparam s: float = 2\nepilogue: bias; mul(s)")
    assert (k.in_features, k.out_features) == (16, 32)
    assert k.init == (InitArg("s", "param", 2.0),)


def test_init_statement_order_is_kept() -> None:
    k = kernel(
        "gemm: linear(a, b)\nparam q: float = 2\nparam t: scalar = 1\n"
        "init: b, zz, t, a, q\nepilogue: bias; mul(q); mul(t)"
    )
    assert k.init == (
        InitArg("b", "out"),
        InitArg("zz", "ignored"),
        InitArg("t", "param", 1.0),
        InitArg("a", "in"),
        InitArg("q", "param", 2.0),
    )


def test_init_may_name_a_required_float() -> None:
    k = kernel("gemm: linear(a, b)\nparam s: float\ninit: a, b, s\nepilogue: bias; mul(s)")
    assert k.init[-1] == InitArg("s", "param", None)


# ---------------------------------------------------------------------------
# Statements with a value


def test_gemm_forms_output_and_precision() -> None:
    k = kernel("gemm: matmul(d_model, d_ff)\noutput: bfloat16\nprecision: ieee\nepilogue: relu")
    assert (k.gemm, k.in_features, k.out_features) == (Gemm.MATMUL, "d_model", "d_ff")
    assert not k.has_bias
    assert (k.output_dtype, k.precision) == ("bfloat16", "ieee")


def test_defaults_of_output_and_precision() -> None:
    k = kernel("epilogue: bias")
    assert (k.gemm, k.has_bias) == (Gemm.LINEAR, True)
    assert (k.output_dtype, k.precision) == (None, "tf32x3")


def test_linear_bias_true_and_false() -> None:
    assert kernel("gemm: linear(a, b, bias=true)\nepilogue: bias").has_bias
    k = kernel("gemm: linear(a, b, bias=false)\nparam bias: vector[N]\nepilogue: add(bias)")
    assert not k.has_bias
    assert k.operand("bias").role is Role.VECTOR


# ---------------------------------------------------------------------------
# The IR listing


GATED = """\
gemm: matmul(d_model, d_ff)
param gamma: vector[N] = ones
param s: float = 0.5
input gate: [M]
output: bfloat16
precision: ieee
epilogue: mul(gamma); acc = acc * s + gate; swish; scale(2)
"""


def _listing(k: Kernel) -> list[str]:
    return format_kernel(k).splitlines()


def _instruction_lines(k: Kernel) -> dict[str, str]:
    """`%3   scalar   = arg s` -> `7:35`, for every instruction line of the listing."""
    out = {}
    for line in _listing(k):
        if line.startswith("  %"):
            code, where = line.rsplit("#", 1)
            out[" ".join(code.split())] = where.strip()
    return out


def test_format_kernel_header_operands_and_init() -> None:
    lines = _listing(kernel(GATED, "specs/gated.fuse"))
    assert lines[:7] == [
        "kernel gated  # from gated.fuse",
        "  gemm matmul: x[M, d_model] @ weight[d_model, d_ff]",
        "  precision ieee; output bfloat16",
        "  vector gamma: [N] = ones",
        "  float  s: scalar = 0.5",
        "  input  gate: [M]",
        "  init(d_model, d_ff, s)",
    ]
    assert lines[-1] == "  store %9"


def test_format_kernel_instructions_with_positions() -> None:
    got = _instruction_lines(kernel(GATED, "gated.fuse"))
    assert got == {
        "%0 [M, N] = gemm x, weight": "1:1",
        "%1 [N] = load gamma": "7:15",
        "%2 [M, N] = mul %0, %1": "7:11",
        "%3 scalar = arg s": "7:35",
        "%4 [M, N] = mul %2, %3": "7:29",
        "%5 [M] = load gate": "7:39",
        "%6 [M, N] = add %4, %5": "7:29",
        "%7 [M, N] = silu %6": "7:45",
        "%9 [M, N] = mul %7, 2.0": "7:52",
    }
    assert "const" not in format_kernel(kernel(GATED, "gated.fuse"))


def test_format_kernel_of_the_smallest_spec() -> None:
    k = kernel("epilogue: bias; sigmoid_residual(scale)\n", "smallest.fuse")
    lines = _listing(k)
    assert "  gemm linear: x[M, in_features] @ weight[out_features, in_features]^T, bias" in lines
    assert "  precision tf32x3; output dtype of x" in lines
    assert "  bias   bias: [N]" in lines
    assert "  float  scale: scalar (required), undeclared" in lines
    assert "  init(in_features, out_features, scale)" in lines
    assert _instruction_lines(k)["%4 [M, N] = sigmoid_residual %2, %3"] == "1:17"
    assert lines[-1] == "  store %4"


def test_format_kernel_shows_booleans_and_constant_operands() -> None:
    k = kernel("epilogue: bias; acc = where(acc > 0, acc, 0.5 * acc)")
    got = _instruction_lines(k)
    assert got["%4 bool = gt %2, 0.0"] == "1:29"
    assert got["%6 [M, N] = mul 0.5, %2"] == "1:43"
    assert got["%7 [M, N] = where %4, %2, %6"] == "1:23"


# ---------------------------------------------------------------------------
# Robustness: a spec that parses either analyzes or fails with a SpecError

ROBUST_SPEC = """\
name: k
gemm: linear(d_in, d_out)
param s: float = -0.5
param t: scalar = 2
param v: vector[N] = ones
input r: [M, N]
input g: [M]
init: d_in, d_out, s, t, extra
def f(a, b=1e-5) = acc * a + b
def h() = f(acc, 2) - 1
epilogue: bias; z = -acc; f(2, b=3); h; acc = where(acc >= 0, acc, z / 2); mul(v); add(g * t); residual(r); hardtanh(min=s); swish
"""


def test_mutilated_specs_fail_only_with_spec_errors() -> None:
    variants = [ROBUST_SPEC[:i] for i in range(len(ROBUST_SPEC))]
    variants += [ROBUST_SPEC[:i] + ROBUST_SPEC[i + 1 :] for i in range(len(ROBUST_SPEC))]
    analyzed = 0
    for text in variants:
        try:
            tree = parse(text)
        except (FuseSyntaxError, UnknownStatementError):
            continue
        try:
            analyze(tree, "k.fuse", text)
        except SpecError as err:
            lines = text.split("\n")
            assert 1 <= err.span.line <= len(lines), (text, err)
        analyzed += 1
    assert analyzed > 200


def test_square_linear_takes_its_size_once() -> None:
    kernel = compile_spec("gemm: linear(d_model, d_model)\nepilogue: bias\n", "sq.fuse").kernel
    assert [a.name for a in kernel.init] == ["d_model"]
    assert kernel.in_features == kernel.out_features == "d_model"


def _globals(source: str) -> set[str]:
    """The names a module binds at its top level."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_no_kernel_name_can_replace_a_global_of_the_generated_module() -> None:
    """The kernel is the one global a spec names: every other global of the module
    (its imports, helpers, tables) must be a name the analyzer refuses for it."""
    compiled = compile_spec(GATED, "gated.fuse")
    name = compiled.kernel.name
    mine = {name, f"{name}_kernel", f"{name}_backward"}
    others = _globals(compiled.source) - mine
    assert {"torch", "triton", "tl", "ModelNew"} <= others
    for name in sorted(others):
        assert name_problem(name) is not None or name in dir(builtins), name
        with pytest.raises(NameClashError):
            kernel(f"name: {name}\nepilogue: bias")
