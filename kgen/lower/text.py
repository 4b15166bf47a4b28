"""Text the lowering writes into a generated module: fresh names for temporaries,
comments that carry a spec's text, fp32 constants. A leaf: every other lowering module
imports it, it imports none of them."""

from __future__ import annotations

import math

from kgen.analyze import RESERVED
from kgen.ir import Kernel


class Namer:
    """Fresh names for temporaries: `{hint}_{n}`, never a name already taken."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)

    def fresh(self, hint: str, number: int) -> str:
        name = f"{hint}_{number}"
        while name in self.taken:
            number += 1000
            name = f"{hint}_{number}"
        self.taken.add(name)
        return name


def new_namer(kernel: Kernel) -> Namer:
    """A namer that avoids the module's own names and the spec's (analyze.RESERVED)."""
    taken = set(RESERVED) | {o.name for o in kernel.operands}
    taken |= {f"{o.name}_ptr" for o in kernel.operands}
    return Namer(taken)


def comment(text: str) -> str:
    """Text safe inside a `#` comment: no line breaks or other control characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def spec_lines(kernel: Kernel) -> list[str]:
    return kernel.source.split("\n")


def literal(value: float) -> str:
    """A Triton fp32 constant. Triton turns a constant equal to 0 into +0.0, so a
    negative zero (which decides the sign of a division by it) is made at run time."""
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return "(tl.full([], 0.0, tl.float32) * -1.0)"
    return repr(float(value))
