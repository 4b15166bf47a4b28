"""Stage 1: spec text -> syntax tree (kgen.syntax), and how syntax errors are reported.

The statement and expression forms of LANGUAGE.md, checked node by node with their
spans (1-based line and column, end column exclusive), then a corpus of malformed
specs, each with the exact position of its error, and the rendering of an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from kgen.errors import (
    FuseSyntaxError,
    LimitError,
    Span,
    SpecError,
    UnknownStatementError,
    format_error,
)
from kgen.syntax import (
    MAX_DEPTH,
    STATEMENT_WORDS,
    Argument,
    BindStep,
    BinOp,
    Call,
    Compare,
    DefParam,
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
    Step,
    _parser,
    parse,
)


def S(line: int, column: int, end_column: int) -> Span:
    """A one-line span."""
    return Span(line, column, line, end_column)


def N(name: str, line: int, column: int) -> Name:
    """A name token starting at line:column."""
    return Name(name, S(line, column, column + len(name)))


def only(text: str) -> Statement:
    tree = parse(text)
    assert len(tree.statements) == 1, tree
    return tree.statements[0]


def steps(text: str) -> tuple[Step, ...]:
    stmt = only(text)
    assert isinstance(stmt, EpilogueStmt)
    return stmt.steps


# `epilogue: acc = ` is 16 characters: an expression written after it starts at column 17.
EXPR_PREFIX = "epilogue: acc = "


def expr(source: str) -> Expr:
    (step,) = steps(EXPR_PREFIX + source)
    assert isinstance(step, BindStep)
    return step.value


# ---------------------------------------------------------------------------
# Statements


def test_name_statement() -> None:
    assert only("name: my_kernel") == NameStmt(N("my_kernel", 1, 7), S(1, 1, 16))


def test_gemm_linear_with_sizes() -> None:
    text = "gemm: linear(in_features, out_features)"
    assert only(text) == GemmStmt(
        N("linear", 1, 7),
        (
            Argument(None, N("in_features", 1, 14), S(1, 14, 25)),
            Argument(None, N("out_features", 1, 27), S(1, 27, 39)),
        ),
        S(1, 1, 40),
    )


def test_gemm_keyword_argument_and_integer_size() -> None:
    stmt = only("gemm: linear(4096, d_ff, bias=false)")
    assert isinstance(stmt, GemmStmt)
    size, name, bias = stmt.args
    assert size == Argument(None, Number(4096.0, "4096", S(1, 14, 18)), S(1, 14, 18))
    assert name == Argument(None, N("d_ff", 1, 20), S(1, 20, 24))
    assert bias == Argument(N("bias", 1, 26), N("false", 1, 31), S(1, 26, 36))
    assert stmt.span == S(1, 1, 37)


def test_gemm_without_arguments() -> None:
    assert only("gemm: matmul()") == GemmStmt(N("matmul", 1, 7), (), S(1, 1, 15))


def test_param_float_with_negative_default() -> None:
    assert only("param s: float = -0.5") == ParamStmt(
        N("s", 1, 7), N("float", 1, 10), None, Number(-0.5, "-0.5", S(1, 18, 22)), S(1, 1, 22)
    )


def test_param_float_with_explicit_plus_sign() -> None:
    stmt = only("param t: float = +2")
    assert isinstance(stmt, ParamStmt)
    assert isinstance(stmt.default, Number)
    assert stmt.default.value == 2.0
    assert stmt.default.span == S(1, 18, 20)


def test_param_vector_with_initialiser() -> None:
    assert only("param v: vector[N] = randn") == ParamStmt(
        N("v", 1, 7), N("vector", 1, 10), N("N", 1, 17), N("randn", 1, 22), S(1, 1, 27)
    )


def test_param_scalar_without_default() -> None:
    assert only("param t: scalar") == ParamStmt(
        N("t", 1, 7), N("scalar", 1, 10), None, None, S(1, 1, 16)
    )


@pytest.mark.parametrize(
    ("dims", "expected"),
    [
        ("[M, N]", (N("M", 1, 11), N("N", 1, 14))),
        ("[N]", (N("N", 1, 11),)),
        ("[M]", (N("M", 1, 11),)),
        # the grammar takes any names; analyze decides which shapes exist
        ("[M, N, K]", (N("M", 1, 11), N("N", 1, 14), N("K", 1, 17))),
    ],
)
def test_input_statement(dims: str, expected: tuple[Name, ...]) -> None:
    text = "input r: " + dims
    assert only(text) == InputStmt(N("r", 1, 7), expected, S(1, 1, len(text) + 1))


def test_init_statement() -> None:
    assert only("init: d_in, d_out, beta") == InitStmt(
        (N("d_in", 1, 7), N("d_out", 1, 13), N("beta", 1, 20)), S(1, 1, 24)
    )


def test_output_statement() -> None:
    assert only("output: bfloat16") == OutputStmt(N("bfloat16", 1, 9), S(1, 1, 17))


def test_precision_statement() -> None:
    assert only("precision: ieee") == PrecisionStmt(N("ieee", 1, 12), S(1, 1, 16))


def test_def_with_parameters_and_default() -> None:
    text = "def f(a, b=1e-5) = acc * a + b"
    assert only(text) == DefStmt(
        N("f", 1, 5),
        (
            DefParam(N("a", 1, 7), None, S(1, 7, 8)),
            DefParam(N("b", 1, 10), Number(1e-5, "1e-5", S(1, 12, 16)), S(1, 10, 16)),
        ),
        BinOp(
            "+",
            BinOp("*", N("acc", 1, 20), N("a", 1, 26), S(1, 20, 27)),
            N("b", 1, 30),
            S(1, 20, 31),
        ),
        S(1, 1, 31),
    )


def test_def_with_negative_default() -> None:
    stmt = only("def g(k=-2) = acc * k")
    assert isinstance(stmt, DefStmt)
    assert stmt.params == (DefParam(N("k", 1, 7), Number(-2.0, "-2", S(1, 9, 11)), S(1, 7, 11)),)


def test_def_without_parameters() -> None:
    assert only("def g() = acc") == DefStmt(N("g", 1, 5), (), N("acc", 1, 11), S(1, 1, 14))


def test_epilogue_steps() -> None:
    text = "epilogue: bias; scale(2); leaky_relu(slope=0.2); z = acc; relu"
    assert only(text) == EpilogueStmt(
        (
            OpStep(N("bias", 1, 11), (), S(1, 11, 15)),
            OpStep(
                N("scale", 1, 17),
                (Argument(None, Number(2.0, "2", S(1, 23, 24)), S(1, 23, 24)),),
                S(1, 17, 25),
            ),
            OpStep(
                N("leaky_relu", 1, 27),
                (Argument(N("slope", 1, 38), Number(0.2, "0.2", S(1, 44, 47)), S(1, 38, 47)),),
                S(1, 27, 48),
            ),
            BindStep(N("z", 1, 50), N("acc", 1, 54), S(1, 50, 57)),
            OpStep(N("relu", 1, 59), (), S(1, 59, 63)),
        ),
        S(1, 1, 63),
    )


def test_op_step_with_empty_parentheses() -> None:
    assert steps("epilogue: relu()") == (OpStep(N("relu", 1, 11), (), S(1, 11, 17)),)


def test_trailing_semicolon_is_allowed() -> None:
    stmt = only("epilogue: bias; relu;")
    assert isinstance(stmt, EpilogueStmt)
    assert [s.op.name for s in stmt.steps if isinstance(s, OpStep)] == ["bias", "relu"]
    assert len(stmt.steps) == 2
    assert stmt.span == S(1, 1, 22)


def test_trailing_semicolon_then_spaces_and_comment() -> None:
    assert len(steps("epilogue: bias; relu ;   # done")) == 2


def test_bind_step_to_acc() -> None:
    (step,) = steps("epilogue: acc = 2 * acc")
    assert step == BindStep(
        N("acc", 1, 11),
        BinOp("*", Number(2.0, "2", S(1, 17, 18)), N("acc", 1, 21), S(1, 17, 24)),
        S(1, 11, 24),
    )


def test_statements_in_file_order_with_lines() -> None:
    text = (
        "name: k\n"
        "gemm: linear(d_in, d_out)\n"
        "param s: float = 1\n"
        "input r: [M, N]\n"
        "init: d_in, d_out\n"
        "output: float32\n"
        "precision: tf32\n"
        "def f() = acc\n"
        "epilogue: bias; f\n"
    )
    tree = parse(text)
    kinds = [type(s) for s in tree.statements]
    assert kinds == [
        NameStmt,
        GemmStmt,
        ParamStmt,
        InputStmt,
        InitStmt,
        OutputStmt,
        PrecisionStmt,
        DefStmt,
        EpilogueStmt,
    ]
    assert [s.span.line for s in tree.statements] == list(range(1, 10))
    assert all(s.span.column == 1 for s in tree.statements)


# ---------------------------------------------------------------------------
# Expressions


def test_number_forms() -> None:
    assert expr("2") == Number(2.0, "2", S(1, 17, 18))
    assert expr("2.") == Number(2.0, "2.", S(1, 17, 19))
    assert expr(".5") == Number(0.5, ".5", S(1, 17, 19))
    assert expr("1e-5") == Number(1e-5, "1e-5", S(1, 17, 21))
    assert expr("1E+3") == Number(1000.0, "1E+3", S(1, 17, 21))
    assert expr("0.25e2") == Number(25.0, "0.25e2", S(1, 17, 23))


def test_negative_number_in_expression_is_neg() -> None:
    assert expr("-0.5") == Neg(Number(0.5, "0.5", S(1, 18, 21)), S(1, 17, 21))


def test_double_negation_and_unary_plus() -> None:
    assert expr("--acc") == Neg(Neg(N("acc", 1, 19), S(1, 18, 22)), S(1, 17, 22))
    # unary + is dropped: the operand itself
    assert expr("+acc") == N("acc", 1, 18)


def test_subtraction_is_left_associative() -> None:
    e = expr("a - b - c")
    assert e == BinOp(
        "-",
        BinOp("-", N("a", 1, 17), N("b", 1, 21), S(1, 17, 22)),
        N("c", 1, 25),
        S(1, 17, 26),
    )


def test_product_binds_tighter_than_sum() -> None:
    e = expr("a + b * c / d")
    assert isinstance(e, BinOp) and e.op == "+"
    assert e.left == N("a", 1, 17)
    assert e.right == BinOp(
        "/",
        BinOp("*", N("b", 1, 21), N("c", 1, 25), S(1, 21, 26)),
        N("d", 1, 29),
        S(1, 21, 30),
    )


def test_unary_minus_binds_tighter_than_product() -> None:
    assert expr("-a * b") == BinOp(
        "*", Neg(N("a", 1, 18), S(1, 17, 19)), N("b", 1, 22), S(1, 17, 23)
    )


def test_parentheses_group_and_the_node_spans_its_inside() -> None:
    e = expr("(a + b) * c")
    assert e == BinOp(
        "*",
        BinOp("+", N("a", 1, 18), N("b", 1, 22), S(1, 18, 23)),
        N("c", 1, 27),
        S(1, 17, 28),
    )


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_comparison_operators(op: str) -> None:
    e = expr(f"acc {op} 0")
    end = 17 + len(f"acc {op} 0")
    right = 17 + len(f"acc {op} ")
    assert e == Compare(
        op, N("acc", 1, 17), Number(0.0, "0", S(1, right, right + 1)), S(1, 17, end)
    )


def test_comparison_operands_are_sums() -> None:
    e = expr("a + 1 <= b * 2")
    assert isinstance(e, Compare)
    assert e.op == "<="
    assert isinstance(e.left, BinOp) and e.left.op == "+"
    assert isinstance(e.right, BinOp) and e.right.op == "*"
    assert e.span == S(1, 17, 31)


def test_comparisons_without_spaces() -> None:
    e = expr("a<=b")
    assert e == Compare("<=", N("a", 1, 17), N("b", 1, 20), S(1, 17, 21))


def test_call_with_positional_and_keyword_arguments() -> None:
    e = expr("where(acc >= 0, acc, b=z / 2)")
    assert e == Call(
        N("where", 1, 17),
        (
            Argument(
                None,
                Compare(">=", N("acc", 1, 23), Number(0.0, "0", S(1, 30, 31)), S(1, 23, 31)),
                S(1, 23, 31),
            ),
            Argument(None, N("acc", 1, 33), S(1, 33, 36)),
            Argument(
                N("b", 1, 38),
                BinOp("/", N("z", 1, 40), Number(2.0, "2", S(1, 44, 45)), S(1, 40, 45)),
                S(1, 38, 45),
            ),
        ),
        S(1, 17, 46),
    )


def test_call_without_arguments_and_nested_calls() -> None:
    assert expr("f()") == Call(N("f", 1, 17), (), S(1, 17, 20))
    e = expr("sigmoid(exp(acc))")
    assert isinstance(e, Call)
    (arg,) = e.args
    assert arg.value == Call(
        N("exp", 1, 25), (Argument(None, N("acc", 1, 29), S(1, 29, 32)),), S(1, 25, 33)
    )


def test_statement_keywords_are_names_inside_expressions_and_steps() -> None:
    text = "epilogue: add(input); mul(param); output = acc; name = epilogue; def = init; gemm"
    assert steps(text) == (
        OpStep(N("add", 1, 11), (Argument(None, N("input", 1, 15), S(1, 15, 20)),), S(1, 11, 21)),
        OpStep(N("mul", 1, 23), (Argument(None, N("param", 1, 27), S(1, 27, 32)),), S(1, 23, 33)),
        BindStep(N("output", 1, 35), N("acc", 1, 44), S(1, 35, 47)),
        BindStep(N("name", 1, 49), N("epilogue", 1, 56), S(1, 49, 64)),
        BindStep(N("def", 1, 66), N("init", 1, 72), S(1, 66, 76)),
        OpStep(N("gemm", 1, 78), (), S(1, 78, 82)),
    )


@pytest.mark.parametrize(
    ("text", "name", "column"),
    [
        ("param gemm: float = 1", "gemm", 7),
        ("param init: vector[N] = randn", "init", 7),
        ("input def: [M, N]", "def", 7),
        ("name: epilogue", "epilogue", 7),
        ("def precision(input) = acc * input", "precision", 5),
    ],
)
def test_statement_keywords_are_names_in_declarations(text: str, name: str, column: int) -> None:
    stmt = only(text)
    assert isinstance(stmt, (ParamStmt, InputStmt, NameStmt, DefStmt))
    assert stmt.name == N(name, 1, column)


def test_def_parameters_may_be_statement_keywords() -> None:
    stmt = only("def f(input, output=2) = acc * input")
    assert isinstance(stmt, DefStmt)
    assert [p.name for p in stmt.params] == [N("input", 1, 7), N("output", 1, 14)]


# ---------------------------------------------------------------------------
# Layout: comments, blank lines, line endings, tabs


def test_comments_and_blank_lines_are_ignored() -> None:
    text = "# a comment\n\n   \nepilogue: relu # trailing comment\n# the end\n\n"
    assert only(text) == EpilogueStmt((OpStep(N("relu", 4, 11), (), S(4, 11, 15)),), S(4, 1, 15))


@pytest.mark.parametrize("text", ["", "\n", "\n\n  \n", "# only a comment", "# one\n# two\n"])
def test_empty_specs_have_no_statements(text: str) -> None:
    assert parse(text) == SpecTree(())


def test_file_without_final_newline() -> None:
    tree = parse("name: k\nepilogue: relu")
    assert tree.statements == (
        NameStmt(N("k", 1, 7), S(1, 1, 8)),
        EpilogueStmt((OpStep(N("relu", 2, 11), (), S(2, 11, 15)),), S(2, 1, 15)),
    )


def test_crlf_line_endings_give_the_same_tree() -> None:
    lf = "# c\ngemm: linear(a, b)\nparam s: float = 2\n\nepilogue: bias; mul(s)\n"
    assert parse(lf.replace("\n", "\r\n")) == parse(lf)


def test_tabs_count_as_one_column() -> None:
    assert steps("epilogue:\tbias;\trelu") == (
        OpStep(N("bias", 1, 11), (), S(1, 11, 15)),
        OpStep(N("relu", 1, 17), (), S(1, 17, 21)),
    )


def test_leading_whitespace_before_a_statement() -> None:
    assert only("   name: k") == NameStmt(N("k", 1, 10), S(1, 4, 11))


# ---------------------------------------------------------------------------
# Row operations (v2): ordinary op steps to the parser


def test_row_operations_parse_as_op_steps() -> None:
    text = (
        "epilogue: softmax; groupnorm(4, eps=1e-5); row_max(keepdim=false); layernorm; avgpool(2)"
    )
    assert steps(text) == (
        OpStep(N("softmax", 1, 11), (), S(1, 11, 18)),
        OpStep(
            N("groupnorm", 1, 20),
            (
                Argument(None, Number(4.0, "4", S(1, 30, 31)), S(1, 30, 31)),
                Argument(N("eps", 1, 33), Number(1e-5, "1e-5", S(1, 37, 41)), S(1, 33, 41)),
            ),
            S(1, 20, 42),
        ),
        OpStep(
            N("row_max", 1, 44),
            (Argument(N("keepdim", 1, 52), N("false", 1, 60), S(1, 52, 65)),),
            S(1, 44, 66),
        ),
        OpStep(N("layernorm", 1, 68), (), S(1, 68, 77)),
        OpStep(
            N("avgpool", 1, 79),
            (Argument(None, Number(2.0, "2", S(1, 87, 88)), S(1, 87, 88)),),
            S(1, 79, 89),
        ),
    )


@pytest.mark.parametrize(
    "step",
    [
        "log_softmax",
        "logsumexp",
        "row_sum",
        "row_mean(keepdim=true)",
        "row_min(keepdim=false)",
        "layernorm(eps=1e-6)",
        "maxpool(4)",
    ],
)
def test_more_row_operations_parse(step: str) -> None:
    (parsed,) = steps("epilogue: " + step)
    assert isinstance(parsed, OpStep)
    assert parsed.op == N(step.split("(")[0], 1, 11)
    assert parsed.span == S(1, 11, 11 + len(step))


def test_row_operation_as_a_function_in_an_expression() -> None:
    e = expr("2 * layernorm(acc)")
    assert isinstance(e, BinOp)
    assert e.right == Call(
        N("layernorm", 1, 21), (Argument(None, N("acc", 1, 31), S(1, 31, 34)),), S(1, 21, 35)
    )


# ---------------------------------------------------------------------------
# Every node's span covers exactly its own text

RICH_SPEC = """\
# every form in one spec
name: k
gemm: linear(d_in, d_out)
param s: float = -0.5
param t: scalar = 2
param v: vector[N] = ones
input r: [M, N]
input g: [M]
init: d_in, d_out, s, t, extra
output: float16
precision: bf16x3
def f(a, b=1e-5) = acc * a + b
def h() = f(acc, 2) - 1
epilogue: bias; z = -acc; f(2, b=3); h; acc = where(acc >= 0, acc, z / 2); mul(v); add(g * t); residual(r); hardtanh(min=s); swish;
"""


def _children(node: object) -> Iterator[object]:
    for field in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, field.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if dataclasses.is_dataclass(item) and not isinstance(item, Span):
                yield item


def _walk(node: object) -> Iterator[object]:
    yield node
    for child in _children(node):
        yield from _walk(child)


def _text(lines: list[str], span: Span) -> str:
    assert span.line == span.end_line, span
    return lines[span.line - 1][span.column - 1 : span.end_column - 1]


def test_every_span_covers_its_source_text() -> None:
    lines = RICH_SPEC.split("\n")
    tree = parse(RICH_SPEC)
    assert len(tree.statements) == 13
    checked = 0
    for stmt in tree.statements:
        # a statement spans its whole line, comments and trailing blanks aside
        assert _text(lines, stmt.span) == lines[stmt.span.line - 1].rstrip()
        for node in _walk(stmt):
            span: Span = node.span  # type: ignore[attr-defined]
            text = _text(lines, span)
            if isinstance(node, Name):
                assert text == node.name
            elif isinstance(node, Number):
                assert float(text) == node.value
                assert text == node.text
            elif isinstance(node, Call):
                assert text.startswith(node.func.name + "(") and text.endswith(")")
            elif isinstance(node, (BinOp, Compare)):
                assert text.startswith(_text(lines, node.left.span))
                assert text.endswith(_text(lines, node.right.span))
                assert f" {node.op} " in text
            elif isinstance(node, Neg):
                assert text == "-" + _text(lines, node.operand.span)
            elif isinstance(node, Argument):
                assert text.endswith(_text(lines, node.value.span))
                if node.keyword is not None:
                    assert text.startswith(node.keyword.name + "=")
            elif isinstance(node, (OpStep, BindStep)):
                first = node.op if isinstance(node, OpStep) else node.target
                assert text.startswith(first.name)
            checked += 1
    assert checked > 100


# ---------------------------------------------------------------------------
# Syntax errors: exact positions

SYNTAX_ERRORS = [
    pytest.param("epilogue: bias; relu(", 1, 22, "got end of file", id="unclosed-paren-at-eof"),
    pytest.param(
        "epilogue: bias; add(1\nname: k", 1, 22, "expected ')' or ','", id="unclosed-paren-at-eol"
    ),
    pytest.param(
        "gemm: linear(a, b\nepilogue: bias", 1, 18, "got end of line", id="unclosed-gemm-paren"
    ),
    pytest.param("gemm linear(a, b)", 1, 6, "expected ':', got 'linear'", id="gemm-missing-colon"),
    pytest.param("param x float", 1, 9, "expected ':', got 'float'", id="param-missing-colon"),
    pytest.param("output float16", 1, 8, "expected ':', got 'float16'", id="output-missing-colon"),
    pytest.param(
        "epilogue: bias; acc = where(a < b < c, 1, 2)",
        1,
        35,
        "unexpected comparison '<'",
        id="chained-comparison",
    ),
    pytest.param(
        "epilogue: acc = 1 < 2 > 3", 1, 23, "unexpected comparison '>'", id="chained-comparison-top"
    ),
    pytest.param("epilogue: bias;; relu", 1, 16, "got ';'", id="double-semicolon"),
    pytest.param("epilogue: ; relu", 1, 11, "expected a name, got ';'", id="leading-semicolon"),
    pytest.param("epilogue: bias relu", 1, 16, "got 'relu'", id="missing-semicolon"),
    pytest.param("epilogue: bias; $", 1, 17, "unexpected character '$'", id="dollar"),
    pytest.param("epilogue: bias; add(a @ b)", 1, 23, "unexpected character '@'", id="at-sign"),
    pytest.param("epilogue: bias; add(a.b)", 1, 22, "unexpected character '.'", id="attribute"),
    pytest.param("epilogue: bias; re\x00lu", 1, 19, "unexpected character '\\x00'", id="nul-byte"),
    pytest.param("epilogue: bias; \u00e9", 1, 17, "unexpected character '\u00e9'", id="non-ascii"),
    pytest.param("epilogue: bias; 'x'", 1, 17, "unexpected character", id="quote"),
    pytest.param("epilogue:\tbias;\t$", 1, 17, "unexpected character '$'", id="after-tabs"),
    pytest.param("epilogue: mul(1e)", 1, 16, "malformed number '1e'", id="number-without-exponent"),
    pytest.param("epilogue: mul(1.2.3)", 1, 18, "got '.3'", id="number-two-dots"),
    pytest.param("epilogue: add(x=)", 1, 17, "got ')'", id="empty-keyword-value"),
    pytest.param("epilogue: add(1=2)", 1, 16, "got '='", id="number-as-keyword"),
    pytest.param("epilogue: bias; add(1,)", 1, 23, "got ')'", id="trailing-comma-in-call"),
    pytest.param("epilogue: bias; add(,1)", 1, 21, "got ','", id="leading-comma-in-call"),
    pytest.param("epilogue: add(1 2)", 1, 17, "got '2'", id="missing-comma"),
    pytest.param("epilogue: bias; add(2 ** 3)", 1, 24, "got '*'", id="power-operator"),
    pytest.param("3: relu", 1, 1, "expected 'def', 'epilogue'", id="number-as-statement"),
    pytest.param("(relu)", 1, 1, "got '('", id="parenthesis-as-statement"),
    pytest.param("epilogue:", 1, 10, "expected a name, got end of file", id="empty-epilogue"),
    pytest.param("epilogue: 3", 1, 11, "expected a name, got '3'", id="number-as-step"),
    pytest.param("epilogue: bias; (relu)", 1, 17, "got '('", id="parenthesised-step"),
    pytest.param("epilogue: bias; acc == 1", 1, 22, "got '='", id="equality"),
    pytest.param("epilogue: bias; z = 1 = 2", 1, 23, "got '='", id="double-assignment"),
    pytest.param("epilogue: bias; acc = ", 1, 23, "got end of file", id="empty-assignment"),
    pytest.param("epilogue: bias; add(acc)(1)", 1, 25, "got '('", id="call-of-call"),
    pytest.param(
        "epilogue: bias; where(acc > 0, acc, 0) > 1",
        1,
        40,
        "unexpected comparison '>'",
        id="comparison-as-step",
    ),
    pytest.param("epilogue: bias; relu)", 1, 21, "got ')'", id="extra-close-paren"),
    pytest.param("epilogue: bias; relu(  # c", 1, 27, "got end of file", id="eof-after-comment"),
    pytest.param("epilogue: bias; relu\nname foo", 2, 6, "got 'foo'", id="error-on-line-2"),
    pytest.param("gemm: linear(a, b) extra", 1, 20, "expected end of line", id="trailing-token"),
    pytest.param("name: k: j", 1, 8, "expected end of line, got ':'", id="name-two-colons"),
    pytest.param("name: 3", 1, 7, "expected a name, got '3'", id="name-number"),
    pytest.param("input r: [M, N", 1, 15, "expected ',' or ']'", id="unclosed-bracket"),
    pytest.param("input r: []", 1, 11, "expected a name, got ']'", id="empty-dims"),
    pytest.param("param v: vector[N = randn", 1, 19, "expected ']', got '='", id="vector-bracket"),
    pytest.param("param s: float = --1", 1, 19, "expected a number, got '-'", id="double-minus"),
    pytest.param("param v: vector[N] = -randn", 1, 23, "got 'randn'", id="negative-initialiser"),
    pytest.param("init: a,", 1, 9, "expected a name, got end of file", id="init-trailing-comma"),
    pytest.param("init:", 1, 6, "expected a name, got end of file", id="empty-init"),
    pytest.param("def f() acc", 1, 9, "expected '=', got 'acc'", id="def-missing-equals"),
    pytest.param("def f(a = x) = acc", 1, 11, "got 'x'", id="def-default-not-a-number"),
    pytest.param("def f(a,) = acc", 1, 9, "expected a name, got ')'", id="def-trailing-comma"),
    pytest.param("def (a) = acc", 1, 5, "expected a name, got '('", id="def-without-name"),
    pytest.param("def f(a) = \n", 1, 12, "got end of line", id="def-without-body"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), SYNTAX_ERRORS)
def test_syntax_error_position_and_message(
    text: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    err = info.value
    assert (err.span.line, err.span.column) == (line, column)
    assert fragment in err.message
    assert isinstance(err, SpecError)


# A name where a statement starts: the statement kgen does not know, with the closest
# keyword. A keyword is a whole word: `paramb` is not `param b` (it used to be).
STATEMENT_ERRORS = [
    pytest.param("relu", 1, 1, "'relu'", "a statement starts with", id="op-as-statement"),
    pytest.param(
        "name: k\n\nsigmoid: acc", 3, 1, "'sigmoid'", "epilogue: bias; relu", id="op-line-3"
    ),
    pytest.param("Epilogue: bias", 1, 1, "'Epilogue'", "'epilogue'", id="capitalised-keyword"),
    pytest.param("EPILOGUE: bias", 1, 1, "'EPILOGUE'", "'epilogue'", id="upper-case-keyword"),
    pytest.param("epilog: bias; relu", 1, 1, "'epilog'", "'epilogue'", id="misspelled-epilogue"),
    pytest.param("name: k\n  precison: tf32", 2, 3, "'precison'", "'precision'", id="indented"),
    pytest.param("gemm: linear(a, b)\nouput: float16", 2, 1, "'ouput'", "'output'", id="ouput"),
    pytest.param("params s: float = 1", 1, 1, "'params'", "'param'", id="plural-param"),
    pytest.param("paramb: vector[N] = randn", 1, 1, "'paramb'", "'param'", id="glued-param"),
    pytest.param("define f() = acc", 1, 1, "'define'", "'def'", id="define"),
    pytest.param("input_x: [M]", 1, 1, "'input_x'", "'input'", id="input_x"),
    pytest.param("epiloguebias; relu", 1, 1, "'epiloguebias'", "'epilogue'", id="glued-epilogue"),
    pytest.param("names: k", 1, 1, "'names'", "'name'", id="plural-name"),
    pytest.param("\t\x0c gemmx: linear(a, b)", 1, 4, "'gemmx'", "'gemm'", id="after-blanks"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment", "hint"), STATEMENT_ERRORS)
def test_unknown_statement(text: str, line: int, column: int, fragment: str, hint: str) -> None:
    with pytest.raises(UnknownStatementError) as info:
        parse(text)
    err = info.value
    assert (err.span.line, err.span.column) == (line, column)
    assert err.message == f"unknown statement {fragment}"
    assert err.hint is not None and hint in err.hint


def test_unknown_statement_renders_its_suggestion_on_the_first_line() -> None:
    text = "name: k\nepilog: bias"
    with pytest.raises(UnknownStatementError) as info:
        parse(text)
    rendered = format_error("k.fuse", text, info.value).splitlines()
    assert rendered[0] == "k.fuse:2:1: error: unknown statement 'epilog' (did you mean 'epilogue'?)"
    assert rendered[2] == "      | ^~~~~~"


def test_statement_words_are_the_grammars_keywords() -> None:
    keywords = {
        t.pattern.value
        for t in _parser().terminals
        if t.pattern.type == "str" and t.pattern.value.isalpha()
    }
    assert keywords == set(STATEMENT_WORDS)


@pytest.mark.parametrize(
    "text",
    [
        "param paramb: float = 1",
        "input input_x: [M, N]",
        "def define(param) = acc * param",
        "name: names",
        "epilogue: epiloguex = acc; defs = epiloguex; acc = defs",
    ],
)
def test_names_that_start_with_a_keyword_are_names(text: str) -> None:
    parse(text)


# ---------------------------------------------------------------------------
# Nesting deeper than kgen handles: an error at the first level too deep

DEPTH_ERRORS = [
    pytest.param(EXPR_PREFIX + "neg(" * 1000 + "acc" + ")" * 1000, 1, 417, id="calls"),
    pytest.param(EXPR_PREFIX + "-" * 1000 + "acc", 1, 117, id="unary-minus"),
    pytest.param(EXPR_PREFIX + "-(" * 1000 + "acc" + ")" * 1000, 1, 217, id="minus-parentheses"),
    pytest.param(EXPR_PREFIX + " + ".join(["acc"] * 5000), 1, 17, id="long-sum"),
    pytest.param(EXPR_PREFIX + "2" + " * 2" * (MAX_DEPTH + 1), 1, 17, id="long-product"),
    pytest.param(
        "name: k\nepilogue: bias; add(" + "exp(" * 500 + "acc" + ")" * 501, 2, 421, id="in-a-step"
    ),
    pytest.param("def f() = " + "neg(" * 101 + "acc" + ")" * 101, 1, 411, id="in-a-def"),
    # the 100th where is level 100, and its comparison, at 1:1805, level 101
    pytest.param(
        EXPR_PREFIX + "where(acc > 0, 1, " * 100 + "acc" + ")" * 100, 1, 1805, id="comparison"
    ),
]


@pytest.mark.parametrize(("text", "line", "column"), DEPTH_ERRORS)
def test_nesting_too_deep(text: str, line: int, column: int) -> None:
    with pytest.raises(LimitError) as info:
        parse(text)
    err = info.value
    assert (err.span.line, err.span.column) == (line, column)
    assert f"at most {MAX_DEPTH} levels" in err.message
    assert err.hint is not None and "z = " in err.hint
    format_error("k.fuse", text, err)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("neg(" * MAX_DEPTH + "acc" + ")" * MAX_DEPTH, id="calls"),
        pytest.param("-" * MAX_DEPTH + "acc", id="unary-minus"),
        pytest.param(" + ".join(["acc"] * (MAX_DEPTH + 1)), id="sum"),
        # parentheses and unary plus are no levels
        pytest.param("(" * 5000 + "acc" + ")" * 5000, id="parentheses"),
        pytest.param("+" * 5000 + "acc", id="unary-plus"),
    ],
)
def test_nesting_up_to_the_limit_parses(source: str) -> None:
    expr(source)


def test_syntax_error_span_covers_the_offending_token() -> None:
    with pytest.raises(FuseSyntaxError) as info:
        parse("gemm: linear(a, b)\nparam x float\n")
    assert info.value.span == S(2, 9, 14)


def test_unclosed_parenthesis_at_end_of_line_has_a_hint() -> None:
    with pytest.raises(FuseSyntaxError) as info:
        parse("epilogue: bias; add(1\nname: k")
    assert info.value.hint is not None
    assert "close the parenthesis" in info.value.hint


def test_unexpected_character_has_a_hint() -> None:
    with pytest.raises(FuseSyntaxError) as info:
        parse("epilogue: bias; $")
    assert info.value.hint is not None
    assert "names are letters" in info.value.hint


def test_expected_tokens_are_named_in_the_users_terms() -> None:
    with pytest.raises(FuseSyntaxError) as info:
        parse("input r: [M, N")
    assert info.value.message == "expected ',' or ']', got end of file"


# The grammar treats a form feed as whitespace, so it does not start a new line: an
# error after one is on the line the parser counts, and is shown with that line.


def test_form_feed_does_not_shift_the_end_of_file_position() -> None:
    with pytest.raises(FuseSyntaxError) as info:
        parse("epilogue: bias;\x0crelu(")
    assert (info.value.span.line, info.value.span.column) == (1, 22)


def test_form_feed_does_not_shift_the_line_shown_by_format_error() -> None:
    text = "epilogue: bias;\x0crelu\nparam x float"
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    assert (info.value.span.line, info.value.span.column) == (2, 9)
    shown = format_error("k.fuse", text, info.value).splitlines()
    assert shown[1] == "    2 | param x float"


def test_prefixes_and_deletions_fail_only_with_syntax_errors_inside_the_text() -> None:
    variants = [RICH_SPEC[:i] for i in range(len(RICH_SPEC))]
    variants += [RICH_SPEC[:i] + RICH_SPEC[i + 1 :] for i in range(len(RICH_SPEC))]
    failures = 0
    for text in variants:
        try:
            parse(text)
        except (FuseSyntaxError, UnknownStatementError) as err:
            failures += 1
            lines = text.split("\n")
            assert 1 <= err.span.line <= len(lines), (text, err)
            assert 1 <= err.span.column <= len(lines[err.span.line - 1]) + 1, (text, err)
    assert failures > 100


# ---------------------------------------------------------------------------
# Rendering


def _caret_column(rendered: list[str]) -> int:
    """The 1-based source column the caret line points at."""
    source, caret = rendered[1], rendered[2]
    gutter = source.index("| ") + 2
    assert caret.index("| ") + 2 == gutter
    return caret.index("^") - gutter + 1


def test_format_error_first_line_source_line_and_caret() -> None:
    text = "gemm: linear(a, b)\nparam x float\n"
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    rendered = format_error("specs/k.fuse", text, info.value).splitlines()
    assert rendered == [
        "specs/k.fuse:2:9: error: expected ':', got 'float'",
        "    2 | param x float",
        "      |         ^~~~~",
    ]
    assert _caret_column(rendered) == 9


def test_format_error_with_hint() -> None:
    text = "name: k\nepilogue: bias; $\n"
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    rendered = format_error("k.fuse", text, info.value).splitlines()
    assert rendered[0] == "k.fuse:2:17: error: unexpected character '$'"
    assert rendered[1] == "    2 | epilogue: bias; $"
    assert _caret_column(rendered) == 17
    assert rendered[2].endswith("^")
    assert rendered[3].startswith("      = hint: names are letters")


def test_format_error_caret_after_the_end_of_the_line() -> None:
    text = "epilogue: bias; relu("
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    rendered = format_error("k.fuse", text, info.value).splitlines()
    assert rendered[0].startswith("k.fuse:1:22: error: expected ")
    assert rendered[1] == "    1 | epilogue: bias; relu("
    assert _caret_column(rendered) == 22


def test_format_error_expands_tabs_so_the_caret_lines_up() -> None:
    text = "epilogue:\tbias;\t$"
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    rendered = format_error("k.fuse", text, info.value).splitlines()
    assert rendered[1] == "    1 | epilogue: bias; $"
    assert _caret_column(rendered) == 17
    assert rendered[1][rendered[2].index("^")] == "$"


def test_format_error_escapes_control_characters_in_messages_and_hints() -> None:
    err = SpecError(S(1, 3, 4), "bad \x1b[31m\r", "write where(a\t<\x00b, a, b)")
    rendered = format_error("k\n.fuse", "ab\x00c", err).splitlines()
    assert rendered == [
        "k\\n.fuse:1:3: error: bad \\x1b[31m\\r",
        "    1 | ab?c",
        "      |   ^",
        "      = hint: write where(a\\t<\\x00b, a, b)",
    ]


def test_format_error_on_a_later_line_of_a_crlf_file() -> None:
    text = "name: k\r\n\r\nparam x float\r\n"
    with pytest.raises(FuseSyntaxError) as info:
        parse(text)
    rendered = format_error("k.fuse", text, info.value).splitlines()
    assert rendered[0] == "k.fuse:3:9: error: expected ':', got 'float'"
    assert rendered[1] == "    3 | param x float"
    assert _caret_column(rendered) == 9
