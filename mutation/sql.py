"""Mutants of PostgreSQL function files: the code inside each function's ``$$`` body.

A small tokenizer finds the tokens of the body (skipping comments, string literals,
quoted identifiers and inner dollar-quoted strings); the changes are made on tokens, and
every mutated file is parsed again with pglast (the PL/pgSQL body with
``parse_plpgsql``, which also parses each embedded SQL statement; a ``LANGUAGE sql``
body with ``parse_sql``). A mutant that does not parse is reported as invalid and never
run.

Kinds of change: ``compare`` (``<`` to ``<=`` and ``>=``, ``=``/``<>``, ``IS [NOT]``,
``IS [NOT] DISTINCT FROM``), ``boolop`` (``AND``/``OR``), ``negate`` (a ``NOT``
removed), ``arith`` (``+``/``-``, ``*``/``/``), ``constant`` (an integer plus and minus
one, ``TRUE``/``FALSE``), ``state`` (a state or parent policy named in a string literal
replaced by another, see :data:`mutation.mutators.STATE_SWAPS`) and ``drop`` (a
PL/pgSQL statement, or a whole ``IF``/loop, replaced by ``NULL;``; a statement of a
``LANGUAGE sql`` body other than its last removed). A constant that is the whole select
list of a ``PERFORM`` or of a ``SELECT`` directly inside ``EXISTS (`` is not changed:
nothing reads it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .mutators import (
    MUTATORS,
    STATE_SWAPS,
    Check,
    Mutant,
    TextChange,
    text_mutants,
)


@dataclass(frozen=True)
class Token:
    kind: str
    """``word``, ``number``, ``string``, ``dollar`` (a dollar-quoted string), ``op``,
    ``param`` (``$1``), ``ident`` (a quoted identifier) or ``punct``."""
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


_OP_CHARS = set("+-*/<>=~!@#%^&|`?")
_WORD = re.compile(r"[A-Za-z_@][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def tokenize(text: str, start: int = 0, end: int | None = None) -> list[Token]:
    """The tokens of ``text[start:end]`` (offsets into ``text``), without comments."""
    stop = len(text) if end is None else end
    out: list[Token] = []
    i = start
    while i < stop:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("--", i):
            newline = text.find("\n", i, stop)
            i = stop if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < stop and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise ValueError(f"unterminated comment at offset {i}")
            i = j
        elif c == "'" or (c in "eE" and text.startswith("'", i + 1)):
            escapes = c != "'"
            j = i + (2 if escapes else 1)
            while True:
                if j >= stop:
                    raise ValueError(f"unterminated string at offset {i}")
                if escapes and text[j] == "\\":
                    j += 2
                elif text[j] == "'":
                    if text.startswith("'", j + 1):
                        j += 2
                    else:
                        break
                else:
                    j += 1
            out.append(Token("string", text[i : j + 1], i, j + 1))
            i = j + 1
        elif c == '"':
            j = text.find('"', i + 1, stop)
            while j >= 0 and text.startswith('"', j + 1):
                j = text.find('"', j + 2, stop)
            if j < 0:
                raise ValueError(f"unterminated quoted identifier at offset {i}")
            out.append(Token("ident", text[i : j + 1], i, j + 1))
            i = j + 1
        elif c == "$":
            param = re.compile(r"\$\d+").match(text, i, stop)
            dollar = _DOLLAR.match(text, i, stop)
            if param:
                out.append(Token("param", param.group(), i, param.end()))
                i = param.end()
            elif dollar:
                close = text.find(dollar.group(), dollar.end(), stop)
                if close < 0:
                    raise ValueError(f"unterminated dollar quote at offset {i}")
                j = close + len(dollar.group())
                out.append(Token("dollar", text[i:j], i, j))
                i = j
            else:
                raise ValueError(f"unexpected '$' at offset {i}")
        elif (word := _WORD.match(text, i, stop)) is not None:
            out.append(Token("word", word.group(), i, word.end()))
            i = word.end()
        elif (number := _NUMBER.match(text, i, stop)) is not None:
            out.append(Token("number", number.group(), i, number.end()))
            i = number.end()
        elif c == ":" and text.startswith(("::", ":="), i):
            out.append(Token("punct", text[i : i + 2], i, i + 2))
            i += 2
        elif c in _OP_CHARS:
            j = i
            while (
                j < stop
                and text[j] in _OP_CHARS
                and not text.startswith(("--", "/*"), j)
                and not (j > i and _WORD.match(text, j, stop) and text[j] == "@")
            ):
                j += 1
            op = text[i:j]
            # PostgreSQL: a multi-character operator ends in + or - only if it holds
            # one of ~ ! @ # % ^ & | ` ?
            while len(op) > 1 and op[-1] in "+-" and not set(op) & set("~!@#%^&|`?"):
                op = op[:-1]
            out.append(Token("op", op, i, i + len(op)))
            i += len(op)
        else:
            out.append(Token("punct", c, i, i + 1))
            i += 1
    return out


_COMPARE = {
    "<": ("<=", ">="),
    "<=": ("<", ">"),
    ">": (">=", "<="),
    ">=": (">", "<"),
    "=": ("<>",),
    "<>": ("=",),
    "!=": ("=",),
}
_ARITH = {"+": "-", "-": "+", "/": "*"}
_NOT_STAR_AFTER = {"(", ",", ".", "SELECT", "RETURNING", "DISTINCT"}
_COMPOUND_END = {"IF": "IF", "CASE": "CASE", "LOOP": "LOOP", "WHILE": "LOOP", "FOR": "LOOP"}
_COMPOUND_END["FOREACH"] = "LOOP"
_CLAUSES = {"ELSIF", "ELSEIF", "ELSE", "WHEN", "EXCEPTION"}


@dataclass(frozen=True)
class Function:
    """One ``CREATE FUNCTION`` of a file: its name, language and body's offsets."""

    name: str
    language: str
    body_start: int
    body_end: int
    returns: str = ""
    """The first word of the return type, lowercase (``trigger`` for a trigger)."""


def functions(text: str) -> list[Function]:
    """The functions a file creates, each with the offsets of its ``$$`` body's text."""
    tokens = tokenize(text)
    out: list[Function] = []
    statement: list[Token] = []
    for token in [*tokens, Token("punct", ";", len(text), len(text))]:
        if token.text != ";":
            statement.append(token)
            continue
        words = [t.upper for t in statement]
        if "FUNCTION" in words and words[:1] == ["CREATE"]:
            at = words.index("FUNCTION") + 1
            name_tokens: list[str] = []
            while at < len(statement) and statement[at].text != "(":
                name_tokens.append(statement[at].text)
                at += 1
            name = "".join(name_tokens).rsplit(".", 1)[-1].strip('"')
            language = ""
            if "LANGUAGE" in words:
                language = statement[words.index("LANGUAGE") + 1].text.lower().strip("'\"")
            returns = ""
            if "RETURNS" in words:
                returns = statement[words.index("RETURNS") + 1].text.lower()
            bodies = [t for t in statement if t.kind == "dollar"]
            if bodies:
                body = bodies[0]
                tag = _DOLLAR.match(body.text)
                assert tag is not None
                width = len(tag.group())
                out.append(Function(name, language, body.start + width, body.end - width, returns))
        statement = []
    return out


def _changes(text: str, function: Function) -> list[TextChange]:
    scope = function.name
    tokens = tokenize(text, function.body_start, function.body_end)
    changes: list[TextChange] = []

    def change(start: int, end: int, replacement: str, kind: str, unread: bool = False) -> None:
        changes.append(TextChange(start, end, replacement, kind, scope, unread))

    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else None
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        word = token.upper
        if token.kind == "op" and token.text in _COMPARE:
            for other in _COMPARE[token.text]:
                change(token.start, token.end, other, "compare")
        elif token.kind == "op" and token.text in _ARITH:
            change(token.start, token.end, _ARITH[token.text], "arith")
        elif token.kind == "op" and token.text == "*":
            if previous is not None and previous.text.upper() not in _NOT_STAR_AFTER:
                change(token.start, token.end, "/", "arith")
        elif word in ("AND", "OR"):
            before = previous.upper if previous is not None else ""
            if (word == "OR" and before != "CREATE") or (
                word == "AND" and not _in_between(tokens, index)
            ):
                change(token.start, token.end, "OR" if word == "AND" else "AND", "boolop")
        elif word == "IS" and following is not None:
            if following.upper == "NOT":
                change(token.start, following.end, "IS", "compare")
            elif following.upper in ("NULL", "TRUE", "FALSE", "DISTINCT"):
                change(token.start, token.end, "IS NOT", "compare")
        elif word == "NOT" and (previous is None or previous.upper != "IS"):
            if following is not None and following.upper not in ("NULL",):
                change(token.start, following.start, "", "negate")
        elif word in ("TRUE", "FALSE"):
            other = "FALSE" if word == "TRUE" else "TRUE"
            change(token.start, token.end, other, "constant", _unread(tokens, index))
        elif token.kind == "number" and token.text.isdigit():
            value, unread = int(token.text), _unread(tokens, index)
            change(token.start, token.end, str(value + 1), "constant", unread)
            less = str(value - 1) if value else "(-1)"
            change(token.start, token.end, less, "constant", unread)
        elif token.kind == "string":
            swapped = STATE_SWAPS.get(token.text[1:-1])
            if swapped is not None and token.text.startswith("'"):
                change(token.start, token.end, f"'{swapped}'", "state")
    if function.language == "plpgsql":
        changes.extend(_plpgsql_drops(tokens, scope))
    elif function.language == "sql":
        changes.extend(_sql_drops(text, tokens, scope))
    return changes


_ENDS_SELECT_LIST = {"FROM", ";", ")", "WHERE"}


def _unread(tokens: list[Token], index: int) -> bool:
    """Whether the constant at ``index`` is the whole select list of a ``PERFORM`` or of
    a ``SELECT`` directly inside ``EXISTS (``: a value nothing reads (``PERFORM`` only
    sets ``FOUND``, ``EXISTS`` only asks whether there is a row)."""
    following = tokens[index + 1] if index + 1 < len(tokens) else None
    if following is not None and (following.upper or following.text) not in _ENDS_SELECT_LIST:
        return False
    head = [token.upper or token.text for token in tokens[max(0, index - 3) : index]]
    return head[-1:] == ["PERFORM"] or head[-3:] == ["EXISTS", "(", "SELECT"]


def _in_between(tokens: list[Token], index: int) -> bool:
    """Whether the ``AND`` at ``index`` is the one of a ``BETWEEN x AND y``."""
    depth = 0
    for back in range(index - 1, -1, -1):
        token = tokens[back]
        if token.text in (")", "]"):
            depth += 1
        elif token.text in ("(", "["):
            if depth == 0:
                return False
            depth -= 1
        elif depth == 0 and token.upper in ("AND", "OR", "WHERE", "THEN", "WHEN", ";"):
            return False
        elif depth == 0 and token.upper == "BETWEEN":
            return True
    return False


def _segments(tokens: list[Token]) -> list[list[Token]]:
    """PL/pgSQL statements and clause heads: split at ``;`` and after ``THEN``,
    ``ELSE``, ``LOOP``, ``BEGIN``, ``DECLARE`` and a leading ``EXCEPTION``, outside
    parentheses and ``CASE`` expressions."""
    out: list[list[Token]] = []
    current: list[Token] = []
    depth = 0
    case_depth = 0
    for token in tokens:
        word = token.upper
        head = current[0].upper if current else ""
        current.append(token)
        if token.text in ("(", "["):
            depth += 1
        elif token.text in (")", "]"):
            depth -= 1
        if depth:
            continue
        if word == "CASE" and len(current) > 1 and head != "END":
            case_depth += 1
        elif word == "END" and case_depth:
            case_depth -= 1
            continue
        if case_depth:
            continue
        ends = (
            token.text == ";"
            or (word in ("THEN", "ELSE") and head != "END")
            or (word == "LOOP" and head != "END")
            or (word in ("BEGIN", "DECLARE", "EXCEPTION") and len(current) == 1)
        )
        if ends:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _plpgsql_drops(tokens: list[Token], scope: str) -> list[TextChange]:
    changes: list[TextChange] = []
    open_compounds: list[tuple[str, int]] = []
    declaring = False
    for segment in _segments(tokens):
        head = segment[0].upper
        last = segment[-1]
        if head == "DECLARE":
            declaring = True
        elif head == "BEGIN":
            declaring = False
            open_compounds.append(("BEGIN", segment[0].start))
        elif head in _CLAUSES:
            continue
        elif head == "END":
            closing = segment[1].upper if len(segment) > 1 else ""
            if open_compounds:
                kind, start = open_compounds.pop()
                if kind != "BEGIN" and closing == kind and last.text == ";":
                    changes.append(TextChange(start, last.end, "NULL;", "drop", scope))
        elif head in _COMPOUND_END:
            open_compounds.append((_COMPOUND_END[head], segment[0].start))
        elif not declaring and open_compounds and last.text == ";" and head != "NULL":
            changes.append(TextChange(segment[0].start, last.end, "NULL;", "drop", scope))
    return changes


def _sql_drops(text: str, tokens: list[Token], scope: str) -> list[TextChange]:
    statements: list[list[Token]] = [[]]
    for token in tokens:
        statements[-1].append(token)
        if token.text == ";":
            statements.append([])
    statements = [statement for statement in statements if statement]
    changes: list[TextChange] = []
    for statement in statements[:-1]:
        if statement[-1].text == ";":
            changes.append(TextChange(statement[0].start, statement[-1].end, "", "drop", scope))
    return changes


def default_render(text: str) -> str:
    """Placeholders ``@NAME`` made parseable: ``@S`` a schema name, others ``1``."""
    return re.sub(r"@S\b", "s", re.sub(r"@(?!S\b)[A-Z_]+", "1", text))


class SqlMutator:
    """Mutates the bodies of the functions a ``.sql`` file creates."""

    language = "sql"

    def __init__(self, render: Callable[[str], str] = default_render) -> None:
        self.render = render
        """Turns the file's text into the SQL the server runs (placeholders filled)."""
        self.invalid: list[tuple[Mutant, str]] = []
        """The mutants of the last call that did not parse, with the parser's message."""

    def check(self, text: str) -> str | None:
        import pglast

        rendered = self.render(text)
        try:
            pglast.parse_sql(rendered)
            for function in functions(rendered):
                body = rendered[function.body_start : function.body_end]
                if function.language == "plpgsql":
                    pglast.parse_plpgsql(rendered)
                elif function.language == "sql":
                    pglast.parse_sql(body)
        except Exception as error:  # pglast.parser.ParseError, and the like
            return f"{type(error).__name__}: {error}"
        return None

    def mutants(self, text: str, path: str) -> list[Mutant]:
        changes: list[TextChange] = []
        for function in functions(text):
            changes.extend(_changes(text, function))
        check: Check = self.check
        baseline = self.check(text)
        if baseline is not None:
            # pglast cannot compile every valid function (a parameter of a composite
            # array type): a mutant is then invalid only if it fails another way.
            def check(mutated: str) -> str | None:
                problem = self.check(mutated)
                return None if problem == baseline else problem

        valid, self.invalid = text_mutants(text, path, changes, check)
        return valid


MUTATORS[".sql"] = SqlMutator()
