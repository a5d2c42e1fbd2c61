"""VNN-LIB reader: the SMT-LIB subset VNN-COMP uses, into a plain `Property`.

Supported: `(declare-const X_i Real)` / `(declare-const Y_j Real)`, `(assert ...)` with `and`,
`or`, `<=`, `>=`, `<`, `>` (read as non-strict, as in VNN-COMP), `=`, and linear terms built with
`+`, `-`, `*` (by a constant). Inputs must end up boxed (one variable per input constraint);
output constraints may be any linear inequalities. The assertions are put in disjunctive normal
form; disjuncts that share an input box form one region. Errors name the file and line.
"""

from __future__ import annotations

import gzip
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from verifier.errors import InputError
from verifier.spec.ball import InputBox
from verifier.spec.property import Conjunction, InputRegion, Property

MAX_DISJUNCTS = 100_000
_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


class VnnlibError(InputError):
    """A VNN-LIB file that cannot be read, with the line at fault."""


@dataclass
class _Ineq:
    """coefs @ vars + const <= 0, where vars are ('X', i) / ('Y', j)."""

    coefs: dict
    const: float
    line: int


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        tokens = []
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split(";", 1)[0]
            tokens.extend((m.group(0), lineno) for m in _TOKEN.finditer(code))
        self.tokens = tokens
        self.pos = 0
        self.vars: dict[str, tuple[str, int]] = {}

    def fail(self, line: int, message: str) -> VnnlibError:
        return VnnlibError(f"{self.source}:{line}: {message}")

    def sexprs(self) -> list:
        """The whole file as nested lists of (token, line) leaves; lists carry their line."""
        stack: list[list] = [[]]
        lines = [0]
        for tok, line in self.tokens:
            if tok == "(":
                stack.append([])
                lines.append(line)
            elif tok == ")":
                if len(stack) == 1:
                    raise self.fail(line, "unbalanced ')'")
                done = stack.pop()
                stack[-1].append(_List(done, lines.pop()))
            else:
                stack[-1].append((tok, line))
        if len(stack) > 1:
            raise self.fail(lines[-1], "unclosed '(' (missing ')')")
        return stack[0]

    # ---- terms and formulas ---------------------------------------------------------------

    def term(self, node) -> tuple[dict, float]:
        """A linear term as ({var: coef}, const)."""
        if isinstance(node, tuple):
            tok, line = node
            if tok in self.vars:
                return {self.vars[tok]: 1.0}, 0.0
            try:
                return {}, float(tok)
            except ValueError:
                raise self.fail(line, f"unknown variable or bad number {tok!r}") from None
        op, args = self.head(node)
        parts = [self.term(a) for a in args]
        if op == "+":
            return _add(parts, [1.0] * len(parts))
        if op == "-":
            if len(parts) == 1:
                return _add(parts, [-1.0])
            return _add(parts, [1.0] + [-1.0] * (len(parts) - 1))
        if op == "*":
            coef, var_part = 1.0, None
            for (c, k), a in zip(parts, args):
                if c:
                    if var_part is not None:
                        raise self.fail(node.line, "product of two variables is not linear")
                    var_part = (c, k)
                else:
                    coef *= k
            if var_part is None:
                return {}, coef
            return {v: coef * w for v, w in var_part[0].items()}, coef * var_part[1]
        raise self.fail(node.line, f"unsupported term operator {op!r}")

    def head(self, node) -> tuple[str, list]:
        if not isinstance(node, _List) or not node.items or not isinstance(node.items[0], tuple):
            line = node.line if isinstance(node, _List) else node[1]
            raise self.fail(line, "expected an expression '(op ...)'")
        return node.items[0][0], node.items[1:]

    def formula(self, node) -> list[list[_Ineq]]:
        """Disjunctive normal form: a list of conjunctions of inequalities."""
        op, args = self.head(node)
        if op == "and":
            result: list[list[_Ineq]] = [[]]
            for a in args:
                result = [x + y for x, y in itertools.product(result, self.formula(a))]
                if len(result) > MAX_DISJUNCTS:
                    raise self.fail(node.line, f"more than {MAX_DISJUNCTS} disjuncts after expansion")
            return result
        if op == "or":
            return [conj for a in args for conj in self.formula(a)]
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.fail(node.line, f"'{op}' takes two arguments, got {len(args)}")
            (lc, lk), (rc, rk) = self.term(args[0]), self.term(args[1])
            diff = _add([(lc, lk), (rc, rk)], [1.0, -1.0])  # left - right
            neg = _add([diff], [-1.0])
            if op in ("<=", "<"):
                return [[_Ineq(*diff, node.line)]]
            if op in (">=", ">"):
                return [[_Ineq(*neg, node.line)]]
            return [[_Ineq(*diff, node.line), _Ineq(*neg, node.line)]]
        raise self.fail(node.line, f"unsupported operator {op!r} (supported: and, or, <=, >=, <, >, =)")


@dataclass
class _List:
    items: list
    line: int


def _add(parts, weights) -> tuple[dict, float]:
    coefs: dict = {}
    const = 0.0
    for (c, k), w in zip(parts, weights):
        for v, a in c.items():
            coefs[v] = coefs.get(v, 0.0) + w * a
        const += w * k
    return coefs, const


def parse_vnnlib(text: str, source: str = "<vnnlib>") -> Property:
    reader = _Reader(text, source)
    common: list[_Ineq] = []
    branching: list[list[list[_Ineq]]] = []
    counts = {"X": 0, "Y": 0}
    for node in reader.sexprs():
        op, args = reader.head(node)
        if op == "declare-const":
            if len(args) != 2 or not isinstance(args[0], tuple) or args[1][0] != "Real":
                raise reader.fail(node.line, "expected (declare-const NAME Real)")
            name = args[0][0]
            m = _VAR.match(name)
            if not m:
                raise reader.fail(node.line, f"variable {name!r}: names must be X_i (inputs) or Y_j (outputs)")
            kind, index = m.group(1), int(m.group(2))
            reader.vars[name] = (kind, index)
            counts[kind] = max(counts[kind], index + 1)
        elif op == "assert":
            if len(args) != 1:
                raise reader.fail(node.line, "assert takes one formula")
            dnf = reader.formula(args[0])
            if len(dnf) == 1:
                common.extend(dnf[0])
            else:
                branching.append(dnf)
        elif op in ("set-logic", "check-sat", "get-model", "set-info", "set-option", "exit"):
            continue
        else:
            raise reader.fail(node.line, f"unsupported command {op!r}")
    if counts["X"] == 0 or counts["Y"] == 0:
        raise VnnlibError(f"{source}: no X_i (input) or no Y_j (output) variables declared")
    declared = set(reader.vars.values())
    for kind in "XY":
        missing = [i for i in range(counts[kind]) if (kind, i) not in declared]
        if missing:
            raise VnnlibError(f"{source}: {kind}_{missing[0]} is not declared, but {kind}_{counts[kind] - 1} is")
    regions: dict[tuple[bytes, bytes], InputRegion] = {}
    total = 1
    for dnf in branching:
        total *= len(dnf)
        if total > MAX_DISJUNCTS:
            raise VnnlibError(f"{source}: more than {MAX_DISJUNCTS} disjuncts after expansion")
    for combo in itertools.product(*branching):
        conj = common + [ineq for part in combo for ineq in part]
        split = _split(reader, conj, counts["X"], counts["Y"])
        if split is None:  # an empty box or a false constant constraint: nothing to violate here
            continue
        box, rows = split
        key = (box.lo.tobytes(), box.hi.tobytes())
        regions.setdefault(key, InputRegion(box, [])).disjuncts.append(rows)
    name = Path(source).name
    return Property(list(regions.values()), counts["X"], counts["Y"], name)


def _split(reader: _Reader, conj: list[_Ineq], n_in: int, n_out: int):
    lo, hi = np.full(n_in, -np.inf), np.full(n_in, np.inf)
    C, d = [], []
    for ineq in conj:
        coefs = {v: a for v, a in ineq.coefs.items() if a != 0.0}
        kinds = {v[0] for v in coefs}
        if not coefs:
            if ineq.const > 0:
                return None  # the constant constraint is false
            continue
        if kinds == {"X"}:
            if len(coefs) != 1:
                raise reader.fail(ineq.line, "linear constraints over several inputs are not supported (only input boxes)")
            ((_, i), a), = coefs.items()
            value = -ineq.const / a
            if a > 0:
                hi[i] = min(hi[i], value)
            else:
                lo[i] = max(lo[i], value)
        elif kinds == {"Y"}:
            row = np.zeros(n_out)
            for (_, j), a in coefs.items():
                row[j] += a
            C.append(row)
            d.append(-ineq.const)
        else:
            raise reader.fail(ineq.line, "constraints mixing inputs and outputs are not supported")
    unbounded = np.flatnonzero(~np.isfinite(lo) | ~np.isfinite(hi))
    if unbounded.size:
        i = int(unbounded[0])
        side = "lower" if not np.isfinite(lo[i]) else "upper"
        raise VnnlibError(f"{reader.source}: input X_{i} has no {side} bound")
    if np.any(lo > hi):
        return None
    if not C:  # no output condition: every input of the box is a violation
        C, d = [np.zeros(n_out)], [0.0]
    return InputBox(lo, hi), Conjunction(np.array(C), np.array(d))


def read_vnnlib(path) -> Property:
    """Read a .vnnlib (or .vnnlib.gz) file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise VnnlibError(f"{path}: cannot read: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except OSError as e:
            raise VnnlibError(f"{path}: corrupt gzip data ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VnnlibError(f"{path}: not a text file") from None
    return parse_vnnlib(text, str(path))
