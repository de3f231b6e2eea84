"""Mutants of Lua scripts.

A small tokenizer finds the tokens (skipping comments and string literals, long
brackets included); the changes are made on tokens, and every mutated file is compiled
again by Lua 5.1 (the language of Redis scripts, through lupa) without running it. A
mutant that does not compile is reported as invalid and never run.

Kinds of change: ``compare`` (``<`` to ``<=`` and ``>=``, ``==``/``~=``), ``boolop``
(``and``/``or``), ``negate`` (a ``not`` removed), ``arith`` (binary ``+``/``-``,
``*``/``/``), ``constant`` (an integer plus and minus one, ``true``/``false``),
``state`` (a state or parent policy named in a string literal replaced by another, see
:data:`mutation.mutators.STATE_SWAPS`) and ``drop`` (a statement removed: a line, or
the lines of one statement, a one-line ``if ... end``, or the whole body of an ``if``
branch).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .mutators import MUTATORS, STATE_SWAPS, Mutant, TextChange, text_mutants


@dataclass(frozen=True)
class Token:
    kind: str
    """``name`` (keywords too), ``number``, ``string`` or ``op``."""
    text: str
    start: int
    end: int
    line: int


_LONG = re.compile(r"\[(=*)\[")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPS = ("...", "..", "==", "~=", "<=", ">=")
KEYWORDS = frozenset(
    {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until",
        "while",
    }
)  # fmt: skip
_VALUE_END = {")", "]", "}"}


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    i, line, n = 0, 1, len(text)

    def long_end(at: int, level: str) -> int:
        close = text.find("]" + level + "]", at)
        if close < 0:
            raise ValueError(f"unterminated long bracket on line {line}")
        return close + len(level) + 2

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif text.startswith("--", i):
            long = _LONG.match(text, i + 2)
            end = long_end(long.end(), long.group(1)) if long else text.find("\n", i)
            end = n if end < 0 else end
            line += text.count("\n", i, end)
            i = end
        elif c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\n":
                    raise ValueError(f"unterminated string on line {line}")
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ValueError(f"unterminated string on line {line}")
            out.append(Token("string", text[i : j + 1], i, j + 1, line))
            i = j + 1
        elif (long := _LONG.match(text, i)) is not None:
            end = long_end(long.end(), long.group(1))
            out.append(Token("string", text[i:end], i, end, line))
            line += text.count("\n", i, end)
            i = end
        elif (name := _NAME.match(text, i)) is not None:
            out.append(Token("name", name.group(), i, name.end(), line))
            i = name.end()
        elif (number := _NUMBER.match(text, i)) is not None:
            out.append(Token("number", number.group(), i, number.end(), line))
            i = number.end()
        else:
            op = next((o for o in _OPS if text.startswith(o, i)), c)
            out.append(Token("op", op, i, i + len(op), line))
            i += len(op)
    return out


_COMPARE = {
    "<": ("<=", ">="),
    "<=": ("<", ">"),
    ">": (">=", "<="),
    ">=": (">", "<"),
    "==": ("~=",),
    "~=": ("==",),
}
_ARITH = {"+": "-", "-": "+", "*": "/", "/": "*"}
_OPENERS = {"function", "do", "if", "repeat"}
_CLOSERS = {"end", "until"}
_CONTINUES_AFTER = {
    ",", "=", "(", "{", "[", "..", "+", "-", "*", "/", "%", "^", "and", "or", "not",
    "==", "~=", "<", "<=", ">", ">=", "#", "local", "return",
}  # fmt: skip
_CONTINUES_BEFORE = {")", "}", "]", "..", "+", "*", "/", "%", "^", "and", "or", "==", "~="}
_CONTINUES_BEFORE |= {"<", "<=", ">", ">=", ",", "then", "do", "="}


def _value_end(token: Token | None) -> bool:
    if token is None:
        return False
    if token.kind == "name":
        return token.text not in KEYWORDS or token.text in ("nil", "true", "false", "end")
    return token.kind in ("number", "string") or token.text in _VALUE_END


def _scopes(tokens: list[Token]) -> list[str]:
    """For each token, the name of the innermost named function holding it (``main``)."""
    out: list[str] = []
    stack: list[str] = []
    for index, token in enumerate(tokens):
        out.append(stack[-1] if stack else "main")
        if token.kind != "name":
            continue
        if token.text == "function":
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            name = following.text if following is not None and following.kind == "name" else ""
            if not name and index >= 2 and tokens[index - 1].text == "=":
                name = tokens[index - 2].text
            stack.append(name or (stack[-1] if stack else "main"))
        elif token.text in ("do", "if", "repeat"):
            # ``for``/``while`` open with their ``do``.
            stack.append(stack[-1] if stack else "main")
        elif token.text in _CLOSERS and stack:
            stack.pop()
    return out


def _statements(tokens: list[Token]) -> list[tuple[int, int]]:
    """Token index ranges ``[first, last]`` of logical lines: physical lines joined while
    brackets are open or a line ends or starts mid-expression."""
    out: list[tuple[int, int]] = []
    depth = 0
    first = 0
    for index, token in enumerate(tokens):
        if index > first:
            previous = tokens[index - 1]
            new_line = token.line != previous.line
            if (
                new_line
                and depth == 0
                and previous.text not in _CONTINUES_AFTER
                and token.text not in _CONTINUES_BEFORE
            ):
                out.append((first, index - 1))
                first = index
        if token.text in ("(", "{", "["):
            depth += 1
        elif token.text in (")", "}", "]"):
            depth -= 1
    if tokens:
        out.append((first, len(tokens) - 1))
    return out


def _drops(tokens: list[Token], scopes: list[str]) -> list[TextChange]:
    changes: list[TextChange] = []
    for first, last in _statements(tokens):
        words = [t.text for t in tokens[first : last + 1] if t.kind == "name"]
        head = tokens[first].text
        opened = sum(w in _OPENERS for w in words)
        closed = sum(w in _CLOSERS for w in words)
        if head in ("end", "else", "elseif", "until", "local") and "function" in words:
            continue
        if head in ("end", "else", "elseif", "until") or opened != closed:
            continue
        if words[:2] == ["local", "function"] or head == "function":
            continue
        changes.append(TextChange(tokens[first].start, tokens[last].end, "", "drop", scopes[first]))
    # The body of each ``if`` branch (after ``then``/``else`` up to the next branch or
    # ``end``), when it spans more than one line.
    stack: list[tuple[str, int]] = []
    for index, token in enumerate(tokens):
        if token.kind != "name":
            continue
        if token.text in ("function", "do", "repeat", "if"):
            stack.append((token.text, -1))
        elif token.text in ("then", "else") and stack and stack[-1][0] == "if":
            stack[-1] = ("if", index + 1)
        elif token.text in ("elseif", "else", "end") and stack and stack[-1][0] == "if":
            body_first = stack[-1][1]
            if 0 <= body_first < index and tokens[body_first].line != tokens[index - 1].line:
                changes.append(
                    TextChange(
                        tokens[body_first].start,
                        tokens[index - 1].end,
                        "",
                        "drop",
                        scopes[body_first],
                    )
                )
            if token.text == "end":
                stack.pop()
            else:
                stack[-1] = ("if", -1)
        elif token.text in _CLOSERS and stack:
            stack.pop()
    return changes


def _changes(tokens: list[Token]) -> list[TextChange]:
    scopes = _scopes(tokens)
    changes: list[TextChange] = []
    for index, token in enumerate(tokens):
        scope = scopes[index]
        previous = tokens[index - 1] if index else None

        def change(replacement: str, kind: str, *, end: int = token.end) -> None:
            changes.append(TextChange(token.start, end, replacement, kind, scope))  # noqa: B023

        if token.kind == "op" and token.text in _COMPARE:
            for other in _COMPARE[token.text]:
                change(other, "compare")
        elif token.kind == "op" and token.text in _ARITH and _value_end(previous):
            change(_ARITH[token.text], "arith")
        elif token.text in ("and", "or"):
            change("or" if token.text == "and" else "and", "boolop")
        elif token.text == "not" and index + 1 < len(tokens):
            change("", "negate", end=tokens[index + 1].start)
        elif token.text in ("true", "false") and token.kind == "name":
            change("false" if token.text == "true" else "true", "constant")
        elif token.kind == "number" and token.text.isdigit():
            value = int(token.text)
            change(str(value + 1), "constant")
            change(str(value - 1) if value else "(-1)", "constant")
        elif token.kind == "string" and token.text[:1] in "'\"":
            swapped = STATE_SWAPS.get(token.text[1:-1])
            if swapped is not None:
                quote = token.text[0]
                change(f"{quote}{swapped}{quote}", "state")
    changes.extend(_drops(tokens, scopes))
    return changes


_COMPILER: list[Callable[[str], object]] = []


def compile_error(source: str) -> str | None:
    """``None`` if Lua 5.1 compiles ``source``, else the compiler's message."""
    if not _COMPILER:
        import lupa.lua51  # type: ignore[import-not-found,import-untyped,unused-ignore]

        runtime = lupa.lua51.LuaRuntime()
        _COMPILER.append(
            runtime.eval(
                "function(s) local f, e = loadstring(s); if f then return nil end; return e end"
            )
        )
    result = _COMPILER[0](source)
    return None if result is None else str(result)


def default_check(text: str) -> str | None:
    """The file compiled on its own, ``@NAME`` placeholders read as ``nil`` (as nothing
    where one stands alone on a line)."""
    alone = re.sub(r"(?m)^\s*@[A-Z_]+\s*$", "", text)
    return compile_error(re.sub(r"@[A-Z_]+", "nil", alone))


class LuaMutator:
    """Mutates the code of a ``.lua`` file."""

    language = "lua"

    def __init__(self, check: Callable[[str, str], str | None] | None = None) -> None:
        self.check = check
        """``check(path, mutated_text)``: ``None`` if the program is valid; by default
        the file compiles on its own."""
        self.invalid: list[tuple[Mutant, str]] = []
        """The mutants of the last call that did not compile, with the message."""

    def mutants(self, text: str, path: str) -> list[Mutant]:
        changes = _changes(tokenize(text))

        def check(mutated: str) -> str | None:
            if self.check is None:
                return default_check(mutated)
            return self.check(path, mutated)

        valid, self.invalid = text_mutants(text, path, changes, check)
        return valid


MUTATORS[".lua"] = LuaMutator()
