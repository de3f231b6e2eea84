"""Mutants and the mutators that make them, one mutator per source language.

A :class:`Mutant` is one small change to one file: the text between two offsets is
replaced by other text. Whatever the language, the runner only needs that, so a
mutator for SQL functions or Lua scripts plugs in next to :class:`PythonMutator` by
implementing :class:`Mutator` and registering its file suffixes in :data:`MUTATORS`.

Ids are stable: a hash of the file, the enclosing scope, the kind of change, the
original and mutated text and the occurrence of that same change in that scope. They do
not move when unrelated lines are added or removed, so a list of equivalent mutants
keeps its meaning across edits elsewhere in the file.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol


@dataclass(frozen=True)
class Mutant:
    """One change to one file."""

    id: str
    path: str
    """The file, relative to the project root, with ``/`` separators."""
    line: int
    end_line: int
    scope: str
    """Where the change sits, e.g. ``Engine._release``."""
    kind: str
    original: str
    """The changed code before (one line, for people)."""
    mutated: str
    """The changed code after (one line, for people)."""
    start: int
    end: int
    replacement: str

    def apply(self, text: str) -> str:
        """``text`` (the original file) with this mutant's change."""
        return text[: self.start] + self.replacement + text[self.end :]

    def describe(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}  {self.id}  [{self.kind}] {self.original} -> {self.mutated}"


class Mutator(Protocol):
    """Makes every mutant of a file in one language."""

    language: str

    def mutants(self, text: str, path: str) -> list[Mutant]:
        """The mutants of ``text``, the content of the file at ``path``, in file order."""
        ...


def mutant_id(path: str, scope: str, kind: str, original: str, mutated: str, nth: int) -> str:
    key = "\x00".join((path, scope, kind, original, mutated, str(nth)))
    return hashlib.sha1(key.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------- Python

_COMPARE_SWAPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}

_ARITH_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


@dataclass(frozen=True)
class _Change:
    node: ast.AST
    kind: str
    new: ast.AST | None
    """The replacement node, or ``None`` to drop a statement."""
    scope: str


class PythonMutator:
    """Mutates the code inside the functions of a Python module.

    Kinds of change: ``compare`` (a comparison operator flipped or moved by one,
    ``<`` to ``<=`` and to ``>=``; ``==``/``!=``, ``is``/``is not``, ``in``/``not in``),
    ``boolop`` (``and``/``or``), ``arith`` (``+``/``-``, ``*``/``//``, ...), ``constant``
    (an integer plus and minus one, ``True``/``False``), ``negate`` (the condition of an
    ``if``, ``while`` or conditional expression negated; ``not x`` to ``x``) and ``drop``
    (a statement replaced by ``pass``). Docstrings, annotations, f-strings and
    ``assert`` statements are left alone; so is module-level code.
    """

    language = "python"

    def mutants(self, text: str, path: str) -> list[Mutant]:
        tree = ast.parse(text)
        baseline = ast.dump(tree)
        lines = text.splitlines(keepends=True)
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line))

        def offset(lineno: int, col: int) -> int:
            line = lines[lineno - 1]
            return starts[lineno - 1] + len(line.encode()[:col].decode())

        # Each mutant is checked (is it a program? does it change the tree?) by parsing
        # the innermost function around it, not the whole file: the rest of the file is
        # the same text either way.
        functions = sorted(
            (offset(f.lineno, 0), offset(f.end_lineno, f.end_col_offset), f.col_offset > 0)
            for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and f.end_lineno is not None
            and f.end_col_offset is not None
        )
        dumps: dict[int, str] = {}

        def parsed(source: str, indented: bool) -> str:
            # An indented function parses as the body of a block.
            return ast.dump(ast.parse(f"if True:\n{source}" if indented else source))

        out: list[Mutant] = []
        seen: Counter[tuple[str, str, str, str]] = Counter()
        for change in _changes(tree):
            node = change.node
            lineno = getattr(node, "lineno", None)
            end_lineno = getattr(node, "end_lineno", None)
            col = getattr(node, "col_offset", None)
            end_col = getattr(node, "end_col_offset", None)
            if lineno is None or end_lineno is None or col is None or end_col is None:
                continue
            start, end = offset(lineno, col), offset(end_lineno, end_col)
            original = _one_line(node)
            if change.new is None:
                replacement, mutated = "pass", "pass"
            elif isinstance(node, ast.stmt):
                replacement = mutated = ast.unparse(change.new)
            else:
                mutated = ast.unparse(change.new)
                replacement = f"({mutated})"
            around = [
                (index, f) for index, f in enumerate(functions) if f[0] <= start and end <= f[1]
            ]
            if around:
                index, (f_start, f_end, indented) = max(around, key=lambda x: x[1][0])
                if index not in dumps:
                    dumps[index] = parsed(text[f_start:f_end], indented)
                before = dumps[index]
                source = text[f_start:start] + replacement + text[end:f_end]
            else:
                indented, before, source = False, baseline, text[:start] + replacement + text[end:]
            try:
                after = parsed(source, indented)
            except SyntaxError:
                continue
            if after == before:
                continue
            key = (change.scope, change.kind, original, mutated)
            nth = seen[key]
            seen[key] += 1
            out.append(
                Mutant(
                    id=mutant_id(path, change.scope, change.kind, original, mutated, nth),
                    path=path,
                    line=lineno,
                    end_line=end_lineno,
                    scope=change.scope,
                    kind=change.kind,
                    original=original,
                    mutated=mutated,
                    start=start,
                    end=end,
                    replacement=replacement,
                )
            )
        out.sort(key=lambda m: (m.start, m.end, m.kind))
        return out


def _one_line(node: ast.AST) -> str:
    if isinstance(node, ast.stmt) and isinstance(
        node, ast.If | ast.For | ast.While | ast.With | ast.Try | ast.AsyncFor | ast.AsyncWith
    ):
        head = ast.unparse(node).splitlines()[0]
        return f"{head} ..."
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= 100 else text[:97] + "..."


def _changes(tree: ast.Module) -> Iterator[_Change]:
    for node in tree.body:
        yield from _in_definitions(node, "")


def _in_definitions(node: ast.stmt, prefix: str) -> Iterator[_Change]:
    if isinstance(node, ast.ClassDef):
        for item in node.body:
            yield from _in_definitions(item, f"{prefix}{node.name}.")
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        scope = f"{prefix}{node.name}"
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                yield from _in_expression(default, scope)
        yield from _in_body(node.body, scope)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def _in_body(body: list[ast.stmt], scope: str) -> Iterator[_Change]:
    for stmt in body:
        if _is_docstring(stmt) or isinstance(stmt, ast.Pass | ast.Assert):
            continue
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield from _in_definitions(stmt, f"{scope}.")
            continue
        if not isinstance(stmt, ast.Global | ast.Nonlocal):
            yield _Change(stmt, "drop", None, scope)
        yield from _in_statement(stmt, scope)


def _in_statement(stmt: ast.stmt, scope: str) -> Iterator[_Change]:
    if isinstance(stmt, ast.If | ast.While) and not _single_compare(stmt.test):
        yield _Change(stmt.test, "negate", ast.UnaryOp(ast.Not(), stmt.test), scope)
    if isinstance(stmt, ast.AugAssign) and type(stmt.op) in _ARITH_SWAPS:
        swapped = ast.AugAssign(stmt.target, _ARITH_SWAPS[type(stmt.op)](), stmt.value)
        yield _Change(stmt, "arith", swapped, scope)
    for field, value in ast.iter_fields(stmt):
        if field in ("annotation", "returns", "type_comment"):
            continue
        children = value if isinstance(value, list) else [value]
        statements = [child for child in children if isinstance(child, ast.stmt)]
        if statements:
            yield from _in_body(statements, scope)
        for child in children:
            if isinstance(child, ast.expr):
                yield from _in_expression(child, scope)
            elif isinstance(child, ast.excepthandler | ast.withitem | ast.keyword):
                for sub in ast.iter_child_nodes(child):
                    if isinstance(sub, ast.expr):
                        yield from _in_expression(sub, scope)
                    elif isinstance(sub, ast.stmt):
                        yield from _in_body([sub], scope)


def _single_compare(expr: ast.expr) -> bool:
    """A one-operator comparison: its negation is already one of the ``compare`` changes."""
    return isinstance(expr, ast.Compare) and len(expr.ops) == 1


def _in_expression(expr: ast.expr, scope: str) -> Iterator[_Change]:
    if isinstance(expr, ast.JoinedStr | ast.Lambda):
        return
    if isinstance(expr, ast.Compare):
        for index, op in enumerate(expr.ops):
            for other in _COMPARE_SWAPS.get(type(op), ()):
                ops = list(expr.ops)
                ops[index] = other()
                new = ast.Compare(expr.left, ops, expr.comparators)
                yield _Change(expr, "compare", new, scope)
    elif isinstance(expr, ast.BoolOp):
        flipped = ast.Or() if isinstance(expr.op, ast.And) else ast.And()
        yield _Change(expr, "boolop", ast.BoolOp(flipped, expr.values), scope)
    elif isinstance(expr, ast.BinOp) and type(expr.op) in _ARITH_SWAPS:
        new_bin = ast.BinOp(expr.left, _ARITH_SWAPS[type(expr.op)](), expr.right)
        yield _Change(expr, "arith", new_bin, scope)
    elif isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        yield _Change(expr, "negate", expr.operand, scope)
    elif isinstance(expr, ast.IfExp) and not _single_compare(expr.test):
        yield _Change(expr.test, "negate", ast.UnaryOp(ast.Not(), expr.test), scope)
    elif isinstance(expr, ast.Constant):
        value = expr.value
        if isinstance(value, bool):
            yield _Change(expr, "constant", ast.Constant(not value), scope)
        elif isinstance(value, int):
            yield _Change(expr, "constant", ast.Constant(value + 1), scope)
            yield _Change(expr, "constant", ast.Constant(value - 1), scope)
    for child in ast.iter_child_nodes(expr):
        if isinstance(child, ast.expr):
            yield from _in_expression(child, scope)
        elif isinstance(child, ast.comprehension | ast.keyword):
            for sub in ast.iter_child_nodes(child):
                if isinstance(sub, ast.expr):
                    yield from _in_expression(sub, scope)


# ---------------------------------------------------------------- text changes


@dataclass(frozen=True)
class TextChange:
    """One change found by a token-level mutator: ``text[start:end]`` becomes
    ``replacement``."""

    start: int
    end: int
    replacement: str
    kind: str
    scope: str
    unread: bool = False
    """A change known to be equivalent by construction (a value nothing reads): no
    mutant is made, but it is counted for the ids of the same change after it, so
    those ids do not move."""


Check = Callable[[str], "str | None"]
"""Validates a whole mutated file: ``None`` if it is a valid program, else the problem."""


def text_mutants(
    text: str, path: str, changes: list[TextChange], check: Check
) -> tuple[list[Mutant], list[tuple[Mutant, str]]]:
    """Mutants of ``text`` from ``changes``, with stable ids: ``(valid, invalid)``, the
    invalid ones with the reason ``check`` gave. A change to the same text is skipped."""
    valid: list[Mutant] = []
    invalid: list[tuple[Mutant, str]] = []
    seen: Counter[tuple[str, str, str, str]] = Counter()
    for change in sorted(changes, key=lambda c: (c.start, c.end, c.kind, c.replacement)):
        original_text = text[change.start : change.end]
        if original_text == change.replacement:
            continue
        original = _squeeze(original_text)
        mutated = _squeeze(change.replacement) or "(nothing)"
        key = (change.scope, change.kind, original, mutated)
        nth = seen[key]
        seen[key] += 1
        if change.unread:
            continue
        line = text.count("\n", 0, change.start) + 1
        mutant = Mutant(
            id=mutant_id(path, change.scope, change.kind, original, mutated, nth),
            path=path,
            line=line,
            end_line=line + original_text.count("\n"),
            scope=change.scope,
            kind=change.kind,
            original=original,
            mutated=mutated,
            start=change.start,
            end=change.end,
            replacement=change.replacement,
        )
        problem = check(mutant.apply(text))
        if problem is None:
            valid.append(mutant)
        else:
            invalid.append((mutant, problem))
    return valid, invalid


def _squeeze(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= 100 else one[:97] + "..."


STATE_SWAPS = {
    "waiting": "delayed",
    "delayed": "waiting",
    "active": "waiting",
    "completed": "failed",
    "failed": "completed",
    "waiting-children": "waiting",
    "fail": "ignore",
    "ignore": "fail",
    "remove": "drop",
    "drop": "remove",
    "continue": "fail",
}
"""A job state or parent policy named in a string literal, and what it becomes in a
``state`` mutant."""


MUTATORS: dict[str, Mutator] = {".py": PythonMutator()}
"""Mutators by file suffix; :mod:`mutation.sql` and :mod:`mutation.lua` add theirs."""


def mutator_for(path: str) -> Mutator:
    from . import lua, sql  # noqa: F401  (they register their mutators)

    suffix = PurePath(path).suffix
    try:
        return MUTATORS[suffix]
    except KeyError:
        known = ", ".join(sorted(MUTATORS))
        raise ValueError(f"no mutator for {suffix!r} files (known: {known})") from None
