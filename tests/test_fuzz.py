"""Fuzzing the front end: whatever the text, kgen builds it or says where it is wrong.

The property, for every text: it goes through the whole front end (`parse`, `analyze`,
`emit_module`, and the module compiles as Python; `build.compile_spec` adds black,
left out here for speed), or it raises a `SpecError` -- never any other exception --
whose position lies inside the text and which `format_error` renders as printable
lines under `FILE:LINE:COL: error:`.

The texts come from
- Hypothesis's `from_lark` over kgen's own grammar, with names and numbers drawn from
  kgen's vocabulary (ops, keywords, reserved names, extreme numbers) so that many of
  them analyze, and from deliberately bad ones;
- mutations of valid specs (specs/*.fuse and the examples of LANGUAGE.md): deleted,
  inserted, swapped, repeated and replaced tokens and characters, duplicated and
  deleted lines, random characters, NULs, tabs, form feeds, CRLF and CR line endings;
- mutations of their bytes, read the way `kgen build` reads a file (`read_spec`):
  invalid UTF-8, byte-order marks, UTF-16, Latin-1;
- and fixed cases: 100,000-character lines, 10,000-line specs, deep nesting.

Each property test runs a multiple of the Hypothesis profile's `max_examples`
(tests/conftest.py; `fuzz(scale)`): 4,000 examples in all with the CI profile (40),
1,000 with dev, 50,000 with thorough.
"""

from __future__ import annotations

import keyword
import re

import pytest
from helpers import ROOT, SPECS
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from kgen import ops, syntax
from kgen.analyze import MAX_OPERATIONS, RESERVED, analyze
from kgen.build import read_spec
from kgen.errors import EncodingError, LimitError, SpecError, format_error
from kgen.ir import DTYPES, PRECISIONS
from kgen.lower.module import emit_module
from kgen.syntax import MAX_DEPTH, parse


def fuzz(scale: int) -> settings:
    """`scale` times the profile's examples: 40 in CI (tests/conftest.py), 10 in dev."""
    return settings(
        max_examples=settings().max_examples * scale,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


LANGUAGE = (ROOT / "grammar" / "LANGUAGE.md").read_text(encoding="utf-8")
SEEDS = [p.read_text(encoding="utf-8") for p in SPECS] + [
    b for b in re.findall(r"```\n(.*?)```", LANGUAGE, flags=re.S) if "epilogue:" in b
]


# ---------------------------------------------------------------------------
# The property


def assert_inside(text: str, err: SpecError, filename: str = "fuzz.fuse") -> None:
    """`err` points at a place in `text`, and renders without trouble."""
    lines = text.split("\n")
    span = err.span
    where = f"{type(err).__name__} at {span}: {err.message[:200]}"
    assert 1 <= span.line <= len(lines), where
    assert 1 <= span.column <= len(lines[span.line - 1]) + 1, where
    assert (span.end_line, span.end_column) > (span.line, span.column), where
    rendered = format_error(filename, text, err)
    head = f"{filename}:{span.line}:{span.column}: error: "
    assert rendered.startswith(head), rendered[:300]
    assert "^" in rendered
    assert all(line.isprintable() for line in rendered.split("\n")), repr(rendered[:300])


def front_end(text: str, filename: str = "fuzz.fuse") -> str:
    """Build `text` as `kgen build` would (less black); what happened, for statistics."""
    try:
        kernel = analyze(parse(text), filename, text)
        source = emit_module(kernel)
    except SpecError as err:
        assert_inside(text, err, filename)
        return type(err).__name__
    compile(source, filename, "exec")  # the module is Python
    return "ok"


# ---------------------------------------------------------------------------
# Texts the grammar derives

# Names kgen gives a meaning to, or forbids, and some it does not know.
VOCABULARY = sorted(
    {
        *ops.public_names(),
        *ops.ROW_OPS,
        *syntax.STATEMENT_WORDS,
        *DTYPES,
        *PRECISIONS,
        *RESERVED,
        *keyword.kwlist,
        *keyword.softkwlist,
        *["acc", "bias", "x", "weight", "true", "false", "randn", "zeros", "ones"],
        *["float", "vector", "scalar", "linear", "matmul", "M", "N", "K", "in_features"],
        *["out_features", "training", "half", "isinstance", "a", "b", "s", "v", "z", "f"],
        *["sigmod", "relu6", "tf23", "float64", "_x", "w_ptr", "stride_m", "Epilogue"],
    }
)
NAMES = st.one_of(
    st.sampled_from(VOCABULARY), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
)
NUMBERS = st.one_of(
    st.sampled_from(
        [
            *["0", "1", "2", "0.5", ".5", "2.", "1e-5", "1E+3", "4096", "3.4028235e38"],
            *["3.5e38", "1e39", "1e-50", "1e300", "1e999", "00", "9" * 40],
        ]
    ),
    st.from_regex(syntax._parser().get_terminal("NUMBER").pattern.to_regexp(), fullmatch=True),
)
SPACE = st.sampled_from(["", " ", "\t", "  ", "\x0c"])


def _spaced(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A token with blanks around it, so that two tokens in a row stay two tokens."""
    return st.tuples(SPACE, strategy, st.sampled_from([" ", "\t"])).map("".join)


# Fixed tokens as themselves: much quicker to draw than from their regular expressions.
KEYWORDS = {
    t.name: st.just(t.pattern.value) for t in syntax._parser().terminals if t.pattern.type == "str"
}
KEYWORDS["COMPARE"] = st.sampled_from(["<", "<=", ">", ">="])
KEYWORDS["__IGNORE_0"] = st.sampled_from([" ", "\t", "\x0c", "\r", "  "])
GRAMMAR_TEXTS = from_lark(
    syntax._parser(),
    explicit={
        **KEYWORDS,
        "NAME": _spaced(NAMES),
        "NUMBER": _spaced(NUMBERS),
        # a comment runs to the end of the line: drawn with the line ends, not anywhere
        "COMMENT": st.just(" "),
        "_NL": st.sampled_from(["\n", "\n\n", " # a comment\n", "\r\n", "\t\n", "#\n"]),
    },
)


@fuzz(20)
@given(text=GRAMMAR_TEXTS)
@example(text="epilogue: bias; relu\n")
def test_grammar_derived_texts(text: str) -> None:
    front_end(text)


_EPILOGUE_TERMINALS = {
    t.name for t in syntax._parser().grammar.compile(["epilogue_stmt"], ())[0]
} | {"__IGNORE_0"}
HEADERS = st.sampled_from(
    [
        "",
        "gemm: linear(d_in, d_out)\nparam s: float = 0.5\ninput r: [M, N]\n",
        "gemm: matmul(a, b)\nparam v: vector[N]\nparam t: scalar = 2\ninput g: [M]\n",
        "def f(a, b=1) = acc * a + b\ndef g() = f(acc, 2) - acc\n",
    ]
)
EPILOGUES = from_lark(
    syntax._parser(),
    start="epilogue_stmt",
    explicit={
        **{k: v for k, v in KEYWORDS.items() if k in _EPILOGUE_TERMINALS},
        "NAME": _spaced(
            st.one_of(
                st.sampled_from(["acc", "bias", "s", "r", "v", "t", "g", "f", "z", "N"]),
                st.sampled_from(ops.public_names()),
                NAMES,
            )
        ),
        "NUMBER": _spaced(NUMBERS),
        "COMMENT": st.just(" "),
    },
)


@fuzz(5)
@given(header=HEADERS, epilogue=EPILOGUES)
def test_grammar_derived_epilogues(header: str, epilogue: str) -> None:
    front_end(header + epilogue)


# ---------------------------------------------------------------------------
# Mutations of valid specs

TOKEN = re.compile(r"\s+|#[^\n]*|[A-Za-z_]\w*|\d+\.?\d*(?:[eE][+-]?\d+)?|<=|>=|.", re.S)
# Characters and words worth inserting: the grammar's own, and some it has no place for.
INSERTS = [
    *"()[],;:=+-*/<>#._$@'\"\\",
    *["\n", "\r", "\r\n", "\t", "\x0c", "\x0b", "\x00", "\x1b", "\x7f", "\x85"],
    *["\u2028", "\ufeff", "\u00e9", "\u0663", "\U0001d7d9", "\udcff", "\u200b"],
    *["<=", ">=", "1e", "1e-", "1e999", ".5.", "0x10", "1_000", "--", "acc", "bias"],
    *["relu", "where", "def", "param", "input", "epilogue:", "name: k", "in", "lambda"],
]
CHARS = st.one_of(st.sampled_from(INSERTS), st.characters(), st.characters(codec="ascii"))


@st.composite
def _mutation(draw: st.DrawFn, text: str) -> str:
    """`text` with one random change."""
    tokens = TOKEN.findall(text) or [""]
    lines = text.split("\n")
    n = len(text)
    i = draw(st.integers(0, n))
    t = draw(st.integers(0, len(tokens) - 1))
    line = draw(st.integers(0, len(lines) - 1))
    kind = draw(
        st.sampled_from(
            [
                "delete",
                "insert",
                "swap",
                "drop-token",
                "repeat-token",
                "replace-token",
                "duplicate-line",
                "delete-line",
                "random",
                "line-endings",
                "blanks",
                "nul",
                "run",
            ]
        )
    )
    if kind == "delete":
        return text[:i] + text[i + draw(st.integers(1, 12)) :]
    if kind == "insert":
        return text[:i] + draw(CHARS) + text[i:]
    if kind == "swap" and t + 1 < len(tokens):
        tokens[t], tokens[t + 1] = tokens[t + 1], tokens[t]
    elif kind == "drop-token":
        del tokens[t]
    elif kind == "repeat-token":
        tokens[t] *= draw(st.sampled_from([2, 3, 50]))
    elif kind == "replace-token":
        tokens[t] = draw(st.one_of(st.sampled_from(tokens), NAMES, NUMBERS, CHARS))
    elif kind == "duplicate-line":
        lines.insert(line, lines[line])
        return "\n".join(lines)
    elif kind == "delete-line":
        del lines[line]
        return "\n".join(lines)
    elif kind == "random":
        return text[:i] + draw(st.text(max_size=12)) + text[i:]
    elif kind == "line-endings":
        return text.replace("\n", draw(st.sampled_from(["\r\n", "\r", "\n\r", "\n\n", " \\\n"])))
    elif kind == "blanks":
        return text.replace(" ", draw(st.sampled_from(["\t", "", "  ", "\x0c", "\xa0"])))
    elif kind == "nul":
        return text[:i] + "\x00" * draw(st.integers(1, 3)) + text[i:]
    elif kind == "run":
        piece = draw(st.sampled_from(["(", "-", "neg(", "a+", "relu;", " ", "#", "9", "x"]))
        return text[:i] + piece * draw(st.integers(50, 400)) + text[i:]
    return "".join(tokens)


MAX_MUTANT = 200_000  # characters: repeated tokens grow fast


@st.composite
def mutants(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(_mutation(text))[:MAX_MUTANT]
    return text


def test_the_seeds_build() -> None:
    assert len(SEEDS) >= 15
    assert {front_end(s) for s in SEEDS} == {"ok"}


@fuzz(50)
@given(text=mutants())
@example(text="paramb: vector[N] = randn\nepilogue: add(b)\n")  # was `param b`
@example(text="define f() = acc\nepilogue: f\n")  # was `def ine`
@example(text="epilogue: acc = " + "neg(" * 1000 + "acc" + ")" * 1000)  # RecursionError
@example(text="epilogue: acc = " + "-" * 1000 + "acc")
@example(text="epilogue: acc = " + " + ".join(["acc"] * 5000))
def test_mutated_specs(text: str) -> None:
    front_end(text)


# ---------------------------------------------------------------------------
# Bytes, read as `kgen build` reads a spec file


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(SEEDS))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = (text + draw(st.sampled_from(["", " # caf\u00e9 \u2014 \u00fc"]))).encode(
        encoding, errors="replace"
    )
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["bytes", "delete", "bom", "crlf", "cr", "nul", "high"]))
        if kind == "bytes":
            data = data[:i] + draw(st.binary(min_size=1, max_size=6)) + data[i:]
        elif kind == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 4)) :]
        elif kind == "bom":
            data = b"\xef\xbb\xbf" + data
        elif kind == "crlf":
            data = data.replace(b"\n", b"\r\n")
        elif kind == "cr":
            data = data.replace(b"\n", b"\r")
        elif kind == "nul":
            data = data[:i] + b"\x00" + data[i:]
        else:
            data = data[:i] + bytes([draw(st.integers(0x80, 0xFF))]) + data[i:]
    return data


@fuzz(25)
@given(data=mutated_bytes())
@example(data=b"\xef\xbb\xbfepilogue: \xff")  # the BOM is not a column of the text shown
@example(data=b"name: k\repilogue: bias; \xff")  # a CR ends a line too
@example(data=b"\xef\xbb\xbf\xef\xbb\xbfepilogue: bias")
@example(data=b"\xff\xfee\x00p\x00i\x00")
def test_spec_files_as_bytes(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.fuse"
    path.write_bytes(data)
    try:
        text = read_spec(path)
    except EncodingError as err:
        assert "\r" not in err.text
        assert_inside(err.text, err)
        # the caret is under the replacement character shown for the first bad byte
        assert err.text.split("\n")[err.span.line - 1][err.span.column - 1] == "\ufffd"
        return
    assert "\r" not in text
    front_end(text)


# ---------------------------------------------------------------------------
# Sizes: very long lines, very many lines, deep nesting

LONG = 100_000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("epilogue: bias; mul(" + "a" * LONG + ")", id="long-name"),
        pytest.param("epilogue: bias; " + "a" * LONG, id="long-unknown-op"),
        pytest.param("epilogue: bias; mul(" + "1" * LONG + ")", id="long-number"),
        pytest.param("epilogue: bias; mul(0." + "0" * LONG + "1)", id="long-small-number"),
        pytest.param("#" + "\x00\t\r" * (LONG // 3) + "\nepilogue: bias", id="long-comment"),
        pytest.param(" \t\x0c" * (LONG // 3) + "epilogue: bias", id="long-indent"),
        pytest.param("epilogue: bias" + " " * LONG + "$", id="long-then-bad-character"),
        pytest.param("epilogue: bias; acc = " + "(" * LONG + "acc" + ")" * LONG, id="parentheses"),
        pytest.param("epilogue: bias; acc = " + "(" * LONG, id="unclosed-parentheses"),
        pytest.param("epilogue: bias; acc = " + "+" * LONG + "acc", id="unary-plus"),
        pytest.param("epilogue: bias; acc = " + "-" * LONG + "acc", id="unary-minus"),
        pytest.param("epilogue: bias; acc = 1" + " + 1" * (LONG // 4), id="long-sum"),
        pytest.param("epilogue: bias; acc = " + "exp(" * (LONG // 4), id="open-calls"),
        pytest.param("epilogue: bias" + "; relu" * (LONG // 6), id="many-steps"),
        pytest.param("epilogue: bias; " + "\x00" * LONG, id="nuls"),
        pytest.param("epilogue: bias; mul(" + "\u00e9" * LONG + ")", id="non-ascii"),
        pytest.param("init: " + ", ".join(f"a{i}" for i in range(LONG // 8)), id="long-init"),
    ],
)
def test_long_lines(text: str) -> None:
    front_end(text)


MANY = 10_000


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("\n" * MANY + "epilogue: bias; sigmod\n", MANY + 1, id="blank-lines"),
        pytest.param("# c\r\n" * MANY + "epilogue: bias; $", MANY + 1, id="comment-lines-crlf"),
        pytest.param(
            "".join(f"param p{i}: float = {i}\n" for i in range(MANY)) + "epilogue: bias; sigmod",
            MANY + 1,
            id="float-params",
        ),
        pytest.param(
            "".join(f"param v{i}: vector[N] = ones\n" for i in range(MANY)) + "param v0: scalar",
            MANY + 1,
            id="vector-params",
        ),
        pytest.param(
            "".join(f"def f{i}() = acc + {i}\n" for i in range(MANY)) + "def f7() = acc",
            MANY + 1,
            id="defs",
        ),
        pytest.param(
            "epilogue: bias\n" + "".join(f"input i{i}: [M, N]\n" for i in range(MANY)) + "init:",
            MANY + 2,
            id="inputs",
        ),
    ],
)
def test_many_lines(text: str, line: int) -> None:
    with pytest.raises(SpecError) as info:
        analyze(parse(text), "fuzz.fuse", text)
    assert info.value.span.line == line
    assert_inside(text, info.value)


def test_many_lines_that_build() -> None:
    text = "".join(f"param p{i}: float = {i}\n" for i in range(MANY // 5))
    text += "".join(f"def f{i}() = acc * p{i}\n" for i in range(MANY // 5))
    text += "epilogue: bias; " + "; ".join(f"f{i}" for i in range(0, MANY // 5, 10)) + "\n"
    assert front_end(text) == "ok"


def _frames(depth: int, then: object) -> object:
    """Call `then()` from `depth` frames further down the stack."""
    return _frames(depth - 1, then) if depth else then()  # type: ignore[operator]


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("neg(" * MAX_DEPTH + "acc" + ")" * MAX_DEPTH, id="calls"),
        pytest.param("-" * MAX_DEPTH + "acc", id="unary-minus"),
        pytest.param(" + ".join(["acc"] * (MAX_DEPTH + 1)), id="sum"),
        pytest.param(
            "where(acc > 0, 1, " * (MAX_DEPTH - 1) + "acc" + ")" * (MAX_DEPTH - 1), id="where"
        ),
    ],
)
def test_the_deepest_expressions_build_even_from_deep_in_the_stack(expression: str) -> None:
    """At the depth limit, with 300 frames already used (a caller's, pytest's), the
    front end still has room: its recursion is bounded well below Python's limit."""
    text = "epilogue: bias; acc = " + expression
    assert _frames(300, lambda: front_end(text)) == "ok"
    with pytest.raises(LimitError):
        parse("epilogue: bias; acc = neg(" + expression + ")")


def test_defs_inlined_at_the_depth_limit_build_from_deep_in_the_stack() -> None:
    half = MAX_DEPTH // 2 - 1
    text = (
        f"def f() = {'neg(' * half}acc{')' * half}\n"
        f"epilogue: bias; acc = {'f(' * half}acc{')' * half}"
    )
    assert _frames(300, lambda: front_end(text)) == "ok"


def test_the_operation_limit_is_far_above_real_specs() -> None:
    text = "epilogue: bias" + "; mul(1.5); relu" * 2000
    assert front_end(text) == "ok"
    assert MAX_OPERATIONS >= 10 * 2 * 2000
