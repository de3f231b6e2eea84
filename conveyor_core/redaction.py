"""Masking the secrets of store URLs, so no message, log line or repr shows a password.

Every store and the CLI use these two functions: :func:`redact_url` for a URL or DSN
shown on purpose (``repr(store)``, "cannot open store <url>"), :func:`redact_text`
for any other text that might quote one (a driver's error message).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MASK", "redact_text", "redact_url", "secrets_of"]

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_QUERY_SECRET = re.compile(
    r"(?P<key>(?:^|(?<=[?&;]))(?:ssl)?(?:password|passwd|pass|pwd)=)(?P<value>[^&;#]*)",
    re.I,
)
_KEYWORD_SECRET = re.compile(
    r"(?P<key>\b(?:ssl)?password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s']+)", re.I
)


def _userinfo_span(url: str, start: int) -> tuple[int, int] | None:
    """Where the password of the authority starting at ``start`` lies, if it has one.

    The user information ends at the last ``@`` before the query, so a password that
    holds an unescaped ``@`` or ``/`` is still masked whole.
    """
    end = len(url)
    for stop in ("?", "#"):
        found = url.find(stop, start)
        if found != -1:
            end = min(end, found)
    at = url.rfind("@", start, end)
    if at == -1:
        return None
    colon = url.find(":", start, at)
    if colon == -1:
        return None
    return colon + 1, at


def redact_url(url: str) -> str:
    """``url`` with its password masked: in the user information
    (``redis://user:***@host``), in query parameters (``?password=***``) and in
    ``key=value`` connection strings (``host=db password=***``). Never raises."""
    if not isinstance(url, str):
        return repr(url)
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _KEYWORD_SECRET.sub(lambda m: m["key"] + MASK, url)
    span = _userinfo_span(url, scheme.end())
    if span is not None and span[0] != span[1]:
        url = url[: span[0]] + MASK + url[span[1] :]
    query = url.find("?")
    if query != -1:
        head, tail = url[: query + 1], url[query + 1 :]
        url = head + _QUERY_SECRET.sub(lambda m: m["key"] + MASK, tail)
    return url


def secrets_of(url: str) -> list[str]:
    """The passwords ``url`` holds, as written and percent-decoded (longest first)."""
    if not isinstance(url, str):
        return []
    found: set[str] = set()
    scheme = _SCHEME.match(url)
    if scheme is None:
        for match in _KEYWORD_SECRET.finditer(url):
            value = match["value"]
            found.add(value)
            if value.startswith("'") and value.endswith("'") and len(value) >= 2:
                found.add(value[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
    else:
        span = _userinfo_span(url, scheme.end())
        if span is not None:
            found.add(url[span[0] : span[1]])
        query = url.find("?")
        if query != -1:
            for match in _QUERY_SECRET.finditer(url[query + 1 :]):
                found.add(match["value"])
    found |= {unquote(value) for value in found}
    found.discard("")
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, *urls: str) -> str:
    """``text`` with every password of ``urls`` masked wherever it appears, and any
    URL or connection string it quotes redacted as :func:`redact_url` does."""
    for secret in (secret for url in urls for secret in secrets_of(url)):
        text = text.replace(secret, MASK)
    return _redact_embedded(text)


def _redact_embedded(text: str) -> str:
    """Redact every URL that appears inside free text."""
    parts: list[str] = []
    position = 0
    for match in _SCHEME.finditer(text):
        if match.start() < position:
            continue
        end = match.end()
        while end < len(text) and not text[end].isspace() and text[end] not in "'\"<>":
            end += 1
        parts.append(_KEYWORD_SECRET.sub(lambda m: m["key"] + MASK, text[position : match.start()]))
        parts.append(redact_url(text[match.start() : end]))
        position = end
    parts.append(_KEYWORD_SECRET.sub(lambda m: m["key"] + MASK, text[position:]))
    return "".join(parts)
