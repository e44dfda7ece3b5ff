"""The one place that renders email templates for a contact (E4–E7).

A template is user data written in a small, Marketo-compatible language:

* dynamic fields ``{{first_name}}``, ``{{ company }}``, sender fields ``{{my_name}}`` and
  custom contact fields ``{{custom_field_<name>}}`` (E4);
* a default, ``{{first_name | default: "there"}}`` (Marketo's spelling, accepted as written) or
  ``{{first_name | default("there")}}`` (Jinja's);
* field prompts ``{{! Introduce yourself}}``: notes to the rep, kept visible in the output (E6).

Nothing else. A template is checked by scanning it for ``{{ … }}`` / ``{% … %}`` / ``{# … #}``
and parsing every field with Jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment`, then
walking the syntax tree (:mod:`jinja2.nodes`): only names of known fields, the ``default``
filter with one string literal, and template text pass. Everything else — attribute or item
access, calls, literals, operators, statements, other filters, unknown names — is a
:class:`TemplateProblem` with its 1-based line and column (E7). With no loops, calls or
recursion left, rendering takes time linear in the template and the contact's values, and its
output is capped at :data:`MAX_OUTPUT`.

Compiled templates are kept in an LRU keyed by a hash of the source, so a template is compiled
once per process however often it is rendered.

Missing values follow E5: the default when one is written; otherwise ``first_name``,
``last_name`` and ``title`` render blank, ``company`` and ``company_friendly`` render "your
company", and any other field *blocks* the email: :class:`Rendered` then names the fields in
``missing`` and carries no subject, HTML or text at all — never a half-rendered email.

Decisions:

* A rendered email larger than :data:`MAX_OUTPUT` raises :class:`OutputTooLarge` (a
  ``ValueError``): it is a broken template or contact record, not a missing field a rep can
  fill in, so it is not reported as ``blocked``.
* Rendering a stored template that no longer passes the check (stored before checks existed)
  raises :class:`TemplateInvalid` (also a ``ValueError``), never renders it.
* The HTML body is rendered with autoescaping, then sanitised with ``nh3`` to an email-safe
  allowlist (links: http, https, mailto; inline styles kept, filtered to layout and type
  properties). Subjects are plain text: one line, CR/LF in values replaced by spaces.
* A ``default`` text is escaped like a contact value (it is text, not markup).
"""

from __future__ import annotations

import bisect
import difflib
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import nh3
from jinja2 import StrictUndefined, nodes
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from server.cache import Lru

#: The largest rendered subject or HTML body, in bytes (UTF-8).
MAX_OUTPUT = 256 * 1024

#: Contact fields read straight from the contact (E4).
CONTACT_FIELDS = ("first_name", "last_name", "title", "company", "email")
#: Sender fields and the key of the sender mapping each one reads.
SENDER_FIELDS = {"my_name": "name", "my_title": "title", "my_email": "email"}
#: Every field name a template may use, apart from ``custom_field_<name>``.
FIELDS = (*CONTACT_FIELDS[:4], "company_friendly", "email", *SENDER_FIELDS)
CUSTOM_PREFIX = "custom_field_"
#: Fields that render blank when they have no value and no default (E5).
BLANK_WHEN_MISSING = frozenset({"first_name", "last_name", "title"})
#: Fields that render "your company" when they have no value and no default (E5).
COMPANY_FIELDS = frozenset({"company", "company_friendly"})
YOUR_COMPANY = "your company"

_KNOWN = frozenset(FIELDS)
_CUSTOM_NAME = re.compile(r"custom_field_[A-Za-z0-9_]+\Z")


# -- public types --------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateProblem:
    """One thing wrong with a template, at a 1-based line and column."""

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class TemplateInvalid(ValueError):
    """A template that does not pass the check; ``problems`` says where and why."""

    def __init__(self, problems: list[TemplateProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class OutputTooLarge(ValueError):
    """A rendered subject or body larger than :data:`MAX_OUTPUT`."""


@dataclass(frozen=True)
class Rendered:
    """A template rendered for one contact; all text empty when ``blocked`` (E5)."""

    subject: str
    html: str
    text: str
    #: Texts of the field prompts still present, subject first (E6).
    prompts: list[str] = field(default_factory=list)
    #: Fields without a value that block the email (E5), e.g. ``["custom_field_phone"]``.
    missing: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        """True when a missing field stops this email from being sent (E5)."""
        return bool(self.missing)


# -- scanning ------------------------------------------------------------------------------

_OPEN = re.compile(r"\{[{%#]")
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
#: A string literal (kept as is) or Marketo's ``| default: "x"`` (rewritten to Jinja's form).
_MARKETO = re.compile(rf"({_STRING})|(\|\s*default\s*):(\s*)({_STRING})", re.DOTALL)
#: ``| default:`` left over after the rewrite: the default is not a quoted text.
_BAD_MARKETO = re.compile(rf"{_STRING}|(\|\s*default\s*:)", re.DOTALL)
_NEWLINE = re.compile(r"\r\n|\r|\n")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: The common shapes of a field, checked without a Jinja parse (same outcome, faster).
_SIMPLE = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:\|\s*default\s*(?::\s*(\"[^\"\\]*\"|'[^'\\]*')|\(\s*(\"[^\"\\]*\"|'[^'\\]*')\s*\))\s*)?",
)
_AT_OFFSET = re.compile(r"^(.*) at (\d+)$", re.DOTALL)


class _Lines:
    """Offsets to 1-based (line, column) for one source."""

    def __init__(self, source: str) -> None:
        self.starts = [0] + [m.end() for m in _NEWLINE.finditer(source)]

    def at(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, offset) - 1
        return i + 1, offset - self.starts[i] + 1


@dataclass(frozen=True)
class _Analysis:
    """What a scan of a template found: problems, its Jinja form, its fields and prompts."""

    problems: tuple[TemplateProblem, ...]
    jinja_source: str
    fields: tuple[str, ...]
    bare: tuple[str, ...]
    prompts: tuple[str, ...]
    prompt_raw: tuple[str, ...]


def _field_end(source: str, start: int) -> int:
    """Offset of the ``}}`` closing a field whose content starts at ``start``; -1 if none.

    String literals are skipped, so a default of ``"}}"`` does not end the field (Jinja's
    lexer reads it the same way); an unterminated quote falls back to the first ``}}``.
    """
    i, n = start, len(source)
    while i < n:
        c = source[i]
        if c in "\"'":
            j = i + 1
            while j < n and source[j] != c:
                j += 2 if source[j] == "\\" else 1
            if j >= n:
                return source.find("}}", start)
            i = j + 1
        elif c == "}" and source.startswith("}}", i):
            return i
        else:
            i += 1
    return -1


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), FIELDS, n=1, cutoff=0.75)
    if close:
        return f' (did you mean "{close[0]}"?)'
    if name.lower().startswith("custom_field") and not _CUSTOM_NAME.match(name):
        return ' (custom fields are written "custom_field_<name>")'
    return ""


def _known(name: str) -> bool:
    return name in _KNOWN or bool(_CUSTOM_NAME.match(name))


_KINDS: dict[type[nodes.Node], str] = {
    nodes.Getattr: "attribute access",
    nodes.Getitem: "item access",
    nodes.Call: "a function call",
    nodes.Const: "a literal value (write plain text outside {{ }})",
    nodes.Concat: "concatenation (~)",
    nodes.Compare: "a comparison",
    nodes.CondExpr: "an if-expression",
    nodes.Test: "a test (is …)",
    nodes.And: "a logical operator",
    nodes.Or: "a logical operator",
    nodes.Not: "a logical operator",
    nodes.List: "a list",
    nodes.Tuple: "a tuple",
    nodes.Dict: "a dictionary",
    nodes.Slice: "slicing",
    nodes.BinExpr: "arithmetic",
    nodes.UnaryExpr: "arithmetic",
}
_ONLY = "only fields and the default filter are allowed; found "
_DEFAULT_USAGE = 'the default filter takes one quoted text, e.g. {{first_name | default: "there"}}'


def _expr_problem(node: nodes.Node, allowed: frozenset[str] | None = None
                  ) -> tuple[str, str | None] | None:
    """Why an output expression is not allowed, with a needle to locate it; None when fine."""
    if isinstance(node, nodes.Name):
        ok = node.name in allowed if allowed is not None else _known(node.name)
        if node.ctx == "load" and ok:
            return None
        return f'unknown field "{node.name}"{_hint(node.name)}', node.name
    if isinstance(node, nodes.Filter):
        if node.name != "default":
            return f'only the default filter is allowed; found filter "{node.name}"', node.name
        if node.node is None:
            return _ONLY + "a filter block", "default"
        if not isinstance(node.node, nodes.Name):
            inner = _expr_problem(node.node, allowed)
            return inner or ('the default filter applies to a field, e.g. '
                             '{{first_name | default: "there"}}', "default")
        if (len(node.args) != 1 or node.kwargs or node.dyn_args or node.dyn_kwargs
                or not isinstance(node.args[0], nodes.Const)
                or not isinstance(node.args[0].value, str)):
            return _DEFAULT_USAGE, "default"
        return _expr_problem(node.node, allowed)
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        # Point at the first access of a chain: ``''.__class__.__mro__`` at ``.__class__``.
        while isinstance(node.node, nodes.Getattr | nodes.Getitem):  # type: ignore[attr-defined]
            node = node.node  # type: ignore[attr-defined]
        if isinstance(node, nodes.Getattr):
            return _ONLY + "attribute access", f".{node.attr}"
        return _ONLY + "item access", "["
    if isinstance(node, nodes.Call):
        return _ONLY + "a function call", "("
    for kind, words in _KINDS.items():
        if isinstance(node, kind):
            return _ONLY + words, None
    return _ONLY + f"an expression ({type(node).__name__})", None


def _locate(content: str, base: tuple[int, int], lineno: int, needle: str | None
            ) -> tuple[int, int]:
    """Line and column of ``needle`` on line ``lineno`` of a field's content (best effort)."""
    line, col = base
    lines = _NEWLINE.split(content)
    lineno = min(max(lineno, 1), len(lines))
    text = lines[lineno - 1]
    start_col = col + 2 if lineno == 1 else 1
    if needle:
        if _IDENT.match(needle):
            m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(needle)}(?![A-Za-z0-9_])", text)
            found = m.start() if m else -1
        else:
            found = text.find(needle)
        if found >= 0:
            return line + lineno - 1, start_col + found
    return (line, col) if lineno == 1 else (line + lineno - 1, 1)


#: The deepest bracket nesting a field may have: nothing a template needs comes close.
MAX_NESTING = 20
_TOO_DEEP = f"this field is nested too deeply (more than {MAX_NESTING} levels of brackets)"


def _nesting(content: str) -> int:
    """The deepest nesting of (), [] and {} in a field's content, outside quoted text."""
    depth = deepest = 0
    quote = ""
    for c in content:
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth -= 1
    return deepest


def _check_field(content: str, start: int, lines: _Lines
                 ) -> tuple[str, list[TemplateProblem], list[tuple[str, bool]]]:
    """Check one field's content; its Jinja form, problems and (field, has_default) pairs."""
    base = lines.at(start)
    converted = _MARKETO.sub(
        lambda m: m.group(1) or f"{m.group(2)}({m.group(3)}{m.group(4)})", content)
    simple = _SIMPLE.fullmatch(content)
    if simple:
        name = simple.group(1)
        if not _known(name):
            line, col = _locate(content, base, 1 + content[:simple.start(1)].count("\n"), name)
            problem = TemplateProblem(line, col, f'unknown field "{name}"{_hint(name)}')
            return converted, [problem], []
        return converted, [], [(name, bool(simple.group(2) or simple.group(3)))]
    if not content.strip():
        return converted, [TemplateProblem(*base, "empty field {{ }}: write a field name, "
                                                  "e.g. {{first_name}}")], []
    for m in _BAD_MARKETO.finditer(converted):
        if m.group(1):
            line, col = lines.at(start + 2 + m.start(1))
            return converted, [TemplateProblem(line, col, _DEFAULT_USAGE)], []
    if _nesting(converted) > MAX_NESTING:
        return converted, [TemplateProblem(*base, _TOO_DEEP)], []
    try:
        tree = _environment(False).parse("{{" + converted + "}}")
    except RecursionError:
        # Jinja's parser recurses once per level (``not not not …``): a field deep enough to
        # exhaust the stack is refused, never a 500.
        return converted, [TemplateProblem(*base, _TOO_DEEP)], []
    except TemplateSyntaxError as exc:
        message = exc.message or "syntax error"
        m = _AT_OFFSET.match(message)
        if m:  # the lexer's "unexpected char '!' at 5": an offset into the parsed text
            message = m.group(1).replace("unexpected char", "unexpected character")
            line, col = lines.at(start + int(m.group(2)))
        else:
            line, col = base[0] + (exc.lineno or 1) - 1, base[1] if (exc.lineno or 1) == 1 else 1
        return converted, [TemplateProblem(line, col, f"syntax error: {message}")], []
    problems: list[TemplateProblem] = []
    used: list[tuple[str, bool]] = []
    for out in tree.body:
        if not isinstance(out, nodes.Output):  # cannot come out of one {{ }}; refuse anyway
            problems.append(TemplateProblem(*base, _ONLY + "a statement"))
            continue
        for node in out.nodes:
            if isinstance(node, nodes.TemplateData):
                continue
            found = _expr_problem(node)
            if found:
                line, col = _locate(content, base, node.lineno, found[1])
                problems.append(TemplateProblem(line, col, found[0]))
            elif isinstance(node, nodes.Filter):
                used.append((node.node.name, True))  # type: ignore[union-attr]
            else:
                used.append((node.name, False))  # type: ignore[attr-defined]
    return converted, problems, used


def _analyse(source: str) -> _Analysis:
    """Scan a template: problems with positions, the Jinja source, fields and prompts."""
    lines = _Lines(source)
    problems: list[TemplateProblem] = []
    out: list[str] = []
    fields: dict[str, None] = {}
    bare: dict[str, None] = {}
    prompts: list[str] = []
    prompt_raw: list[str] = []
    i = 0
    while True:
        m = _OPEN.search(source, i)
        if m is None:
            out.append(source[i:])
            break
        start = m.start()
        out.append(source[i:start])
        kind = source[start + 1]
        if kind in "%#":
            close = "%}" if kind == "%" else "#}"
            what = ("a {% … %} block (loops, conditions and other statements are not "
                    "supported)" if kind == "%" else "a {# … #} comment")
            problems.append(TemplateProblem(*lines.at(start), _ONLY + what))
            end = source.find(close, start + 2)
            i = len(source) if end < 0 else end + 2
            continue
        body = start + 2
        j = body
        while j < len(source) and source[j] in " \t\r\n":
            j += 1
        if j < len(source) and source[j] == "!":
            end = source.find("}}", j)
            if end < 0:
                problems.append(TemplateProblem(*lines.at(start), 'this field prompt is not '
                                                'closed; end it with "}}"'))
                break
            raw = source[start:end + 2]
            # Newlines stay inside the tag so the generated source keeps the line numbers.
            out.append("{{ _prompt_" + str(len(prompts)) + "\n" * raw.count("\n") + " }}")
            prompts.append(source[j + 1:end].strip())
            prompt_raw.append(raw)
            i = end + 2
            continue
        end = _field_end(source, body)
        if end < 0:
            problems.append(TemplateProblem(*lines.at(start),
                                            'this field is not closed; end it with "}}"'))
            break
        content = source[body:end]
        converted, found, used = _check_field(content, start, lines)
        problems.extend(found)
        for name, has_default in used:
            fields.setdefault(name)
            if not has_default:
                bare.setdefault(name)
        out.append("{{" + converted + "}}")
        i = end + 2
    return _Analysis(tuple(sorted(problems, key=lambda p: (p.line, p.column))), "".join(out),
                     tuple(fields), tuple(bare), tuple(prompts), tuple(prompt_raw))


# -- compiling (cached) --------------------------------------------------------------------


class _Absent:
    """A field with no value: what it prints when the template gives no default (E5)."""

    __slots__ = ("fallback",)

    def __init__(self, fallback: str) -> None:
        self.fallback = fallback

    def __str__(self) -> str:
        return self.fallback


def _default(value: Any, text: str = "") -> Any:
    """The ``default`` filter: the text when the field has no value (E5)."""
    return text if isinstance(value, _Absent) else value


@functools.cache
def _environment(html: bool) -> SandboxedEnvironment:
    """The sandbox: no globals, no tests, one filter; autoescaping for HTML bodies."""
    env = SandboxedEnvironment(autoescape=html, undefined=StrictUndefined,
                               keep_trailing_newline=True, cache_size=0, auto_reload=False)
    env.filters = {"default": _default}
    env.tests = {}
    env.globals = {}
    return env


_ANALYSES: Lru[Any] = Lru(2048)
_COMPILED: Lru[Any] = Lru(1024)
_RENDERED: Lru[Any] = Lru(4096)


def _digest(source: str) -> bytes:
    return hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _analysis(source: str, key: bytes | None = None) -> _Analysis:
    key = key or _digest(source)
    found = _ANALYSES.get(key)
    if found is None:
        found = _analyse(source)
        _ANALYSES.put(key, found)
    return found


@dataclass(frozen=True)
class _Compiled:
    digest: bytes
    analysis: _Analysis
    template: JinjaTemplate | None
    problems: tuple[TemplateProblem, ...]


def _compile(source: str, html: bool) -> _Compiled:
    """The analysis and the compiled Jinja template of a source (from the LRU when cached)."""
    digest = _digest(source)
    key = (html, digest)
    found = _COMPILED.get(key)
    if found is not None:
        return found  # type: ignore[no-any-return]
    analysis = _analysis(source, digest)
    template = None
    problems = analysis.problems
    if not problems:
        problems = _check_whole(analysis, html)
        if not problems:
            template = _environment(html).from_string(analysis.jinja_source)
    found = _Compiled(digest, analysis, template, problems)
    _COMPILED.put(key, found)
    return found


def _check_whole(analysis: _Analysis, html: bool) -> tuple[TemplateProblem, ...]:
    """Walk the whole generated template once more before compiling it (defence in depth)."""
    allowed = frozenset(analysis.fields) | {f"_prompt_{i}" for i in range(len(analysis.prompts))}
    try:
        tree = _environment(html).parse(analysis.jinja_source)
    except TemplateError as exc:  # pragma: no cover - the per-field check parses the same text
        return (TemplateProblem(getattr(exc, "lineno", None) or 1, 1, f"syntax error: {exc}"),)
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return (TemplateProblem(node.lineno, 1, _ONLY + "a statement"),)
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                continue
            found = _expr_problem(child, allowed)
            if found:
                return (TemplateProblem(child.lineno, 1, found[0]),)
    return ()


def _compiled(source: str, html: bool) -> _Compiled:
    found = _compile(source, html)
    if found.template is None:
        raise TemplateInvalid(list(found.problems))
    return found


# -- public: checking ----------------------------------------------------------------------


def check_template(source: str) -> list[TemplateProblem]:
    """Every problem of a template (a subject or an HTML body), by position; [] when valid.

    Used when a template is saved: unknown fields, anything but fields and the ``default``
    filter with one quoted text, ``{% … %}`` blocks and syntax errors are problems (E4, E7).
    """
    return list(_compile(source, True).problems)


def template_prompts(source: str) -> list[str]:
    """The texts of the template's field prompts ``{{! …}}``, in order (E6)."""
    return list(_analysis(source).prompts)


# -- public: rendering ---------------------------------------------------------------------

_SUFFIXES = re.compile(
    r"(?:[\s,]+(?:inc\.?|incorporated|llc\.?|l\.l\.c\.?|ltd\.?|limited|gmbh|ag|kg|corp\.?|"
    r"corporation|co\.?|s\.a\.?|sa|s\.a\.s\.?|sas|sarl|s\.l\.?|b\.v\.?|bv|n\.v\.?|nv|ab|oy|"
    r"aps|a/s|as|pty|plc|llp|lp|s\.p\.a\.?|spa|srl|s\.r\.l\.?|k\.k\.?|pte)|[\s,&]+)\Z",
    re.IGNORECASE)


def company_friendly(company: str | None) -> str | None:
    """A company name without its legal form: "Acme, Inc." is "Acme" (E4)."""
    if company is None:
        return None
    name = company.strip()
    while True:
        shorter = _SUFFIXES.sub("", name)
        if shorter == name or not shorter.strip(" ,&"):
            return name.strip(" ,&") or company.strip()
        name = shorter


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    value = (raw if isinstance(raw, str) else str(raw)).strip()
    return value or None


def _value(name: str, contact: Any, sender: Any) -> str | None:
    """The field's value for this contact and sender, None when it has none."""
    if name == "company_friendly":
        return _text(company_friendly(_text(_get(contact, "company"))))
    if name in SENDER_FIELDS:
        return _text(_get(sender, SENDER_FIELDS[name]))
    if name.startswith(CUSTOM_PREFIX):
        custom = _get(contact, "custom_fields") or {}
        key = name[len(CUSTOM_PREFIX):]
        if not isinstance(custom, Mapping):
            return None
        if key in custom:
            return _text(custom[key])
        for other, raw in custom.items():  # custom field names are matched case-insensitively
            if isinstance(other, str) and other.lower() == key.lower():
                return _text(raw)
        return None
    return _text(_get(contact, name))


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text
                                           or not text.isprintable()) else text


def _prepare(compiled: _Compiled, contact: Any, sender: Any, *, one_line: bool
             ) -> tuple[dict[str, Any], list[str], tuple[str | None, ...]]:
    """The render context, the fields whose absence blocks the email, and the values used."""
    analysis = compiled.analysis
    context: dict[str, Any] = {}
    missing: list[str] = []
    values: list[str | None] = []
    for name in analysis.fields:
        value = _value(name, contact, sender)
        values.append(value)
        if value is None:
            if name in analysis.bare and name not in BLANK_WHEN_MISSING | COMPANY_FIELDS:
                missing.append(name)
            context[name] = _Absent(YOUR_COMPANY if name in COMPANY_FIELDS else "")
        else:
            context[name] = _one_line(value) if one_line else value
    for i, raw in enumerate(analysis.prompt_raw):
        context[f"_prompt_{i}"] = raw
    return context, missing, tuple(values)


def _run(template: JinjaTemplate, context: dict[str, Any], what: str) -> str:
    """Render with the output cap, stopping as soon as the output passes it."""
    parts: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_OUTPUT:
            break
        parts.append(chunk)
    out = "".join(parts)
    if size > MAX_OUTPUT or len(out.encode("utf-8", "surrogatepass")) > MAX_OUTPUT:
        raise OutputTooLarge(f"the rendered {what} is larger than 256 KB; shorten the template "
                             "or the contact's field values")
    return out


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def render_text(source: str, contact: Mapping[str, Any], sender: Mapping[str, Any]
                ) -> tuple[str, list[str]]:
    """A plain-text, one-line template (a subject) for a contact, and the blocking fields.

    With a missing field (E5) the text is "" and the list names the fields. Raises
    :class:`TemplateInvalid` for a template that does not pass :func:`check_template` and
    :class:`OutputTooLarge` past :data:`MAX_OUTPUT`.
    """
    compiled = _compiled(source, False)
    context, missing, _ = _prepare(compiled, contact, sender, one_line=True)
    if missing:
        return "", missing
    assert compiled.template is not None
    return _one_line(_run(compiled.template, context, "subject")), []


def render_email(subject: str, body_html: str, contact: Mapping[str, Any],
                 sender: Mapping[str, Any]) -> Rendered:
    """A template's subject and HTML body rendered for a contact by a sender (E4–E6).

    The HTML is sanitised to the email-safe allowlist and a plain-text alternative derived
    from it; prompts stay visible as ``{{! …}}`` and are listed. When a field is missing (E5)
    the result is blocked: ``missing`` names the fields and subject, HTML and text are empty.
    Raises :class:`TemplateInvalid` or :class:`OutputTooLarge` (both ``ValueError``).
    """
    subject_c = _compiled(subject, False)
    body_c = _compiled(body_html, True)
    subject_ctx, subject_missing, subject_values = _prepare(subject_c, contact, sender,
                                                            one_line=True)
    body_ctx, body_missing, body_values = _prepare(body_c, contact, sender, one_line=False)
    # The same template for the same values renders the same email: a repeated render (a
    # prefill reloaded, a follow-up's quoted block) skips the sanitiser and the text pass.
    key = (subject_c.digest, body_c.digest, subject_values, body_values)
    done = _RENDERED.get(key)
    if done is None:
        done = _render_email(subject_c, body_c, subject_ctx, body_ctx,
                             _unique([*subject_missing, *body_missing]))
        _RENDERED.put(key, done)
    return Rendered(done.subject, done.html, done.text, list(done.prompts), list(done.missing))


def _render_email(subject_c: _Compiled, body_c: _Compiled, subject_ctx: dict[str, Any],
                  body_ctx: dict[str, Any], missing: list[str]) -> Rendered:
    prompts = [*subject_c.analysis.prompts, *body_c.analysis.prompts]
    if missing:
        return Rendered("", "", "", prompts, missing)
    assert subject_c.template is not None and body_c.template is not None
    rendered_subject = _one_line(_run(subject_c.template, subject_ctx, "subject"))
    html = sanitise_html(_run(body_c.template, body_ctx, "email"))
    if len(html.encode("utf-8", "surrogatepass")) > MAX_OUTPUT:
        raise OutputTooLarge("the rendered email is larger than 256 KB; shorten the template "
                             "or the contact's field values")
    return Rendered(rendered_subject, html, html_to_text(html), prompts, [])


# -- sanitising and the plain-text alternative ---------------------------------------------

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "cite", "code", "col",
    "colgroup", "dd", "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small",
    "span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
    "tr", "tt", "u", "ul",
}
_CELL = {"align", "valign", "width", "height", "bgcolor", "colspan", "rowspan", "nowrap"}
_ATTRIBUTES = {
    "*": {"style", "align", "dir", "title", "lang"},
    "a": {"href", "name", "target"},
    "img": {"src", "alt", "width", "height", "border"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "align",
              "role"},
    "td": _CELL, "th": _CELL, "tr": {"valign", "bgcolor", "height"},
    "col": {"width", "span"}, "colgroup": {"width", "span"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type"}, "ul": {"type"}, "li": {"value"},
    "blockquote": {"cite", "type"}, "q": {"cite"},
}
_STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "line-height", "letter-spacing", "word-spacing",
    "text-align", "text-decoration", "text-indent", "text-transform", "white-space",
    "vertical-align", "direction", "width", "max-width", "min-width", "height", "max-height",
    "min-height", "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left", "border",
    "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-radius", "border-collapse", "border-spacing",
    "display", "list-style", "list-style-type",
}
#: The email-safe allowlist, as ``nh3.clean`` keyword arguments.
NH3_OPTIONS: dict[str, Any] = {
    "tags": _TAGS,
    "clean_content_tags": {"script", "style"},
    "attributes": _ATTRIBUTES,
    "url_schemes": {"http", "https", "mailto"},
    "filter_style_properties": _STYLE_PROPERTIES,
    "link_rel": "noopener noreferrer",
    "strip_comments": True,
}


@functools.cache
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(**NH3_OPTIONS)


def sanitise_html(html: str) -> str:
    """HTML reduced to the email-safe allowlist: no scripts, handlers or javascript: links."""
    return _cleaner().clean(html)


_PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "dl", "pre",
              "blockquote", "hr", "center"}
_LINE = {"div", "tr", "li", "dt", "dd", "caption"}
_QUOTE_IN, _QUOTE_OUT, _PRE_IN, _PRE_OUT = "\ue000", "\ue001", "\ue002", "\ue003"
_MARKS = re.compile("[\ue000-\ue003]")
_PRIVATE = re.compile("[\x00\ue000-\ue003]")


class _TextWriter(HTMLParser):
    """Sanitised HTML to plain text: blocks on their own lines, links as "text (url)".

    Breaks between blocks are *pending* until text follows, so nested and adjacent blocks
    give one line break (or one blank line between paragraphs), never a pile of them.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pending = 0  # newlines owed before the next text
        self.fresh = True  # at the start of a block: no break needed
        self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [is_ordered, next number]
        self.links: list[tuple[str | None, int]] = []

    def _block(self, newlines: int) -> None:
        if not self.fresh:
            self.pending = max(self.pending, newlines)

    def _write(self, text: str) -> None:
        if self.pending:
            self.out.append("\n" * self.pending)
            self.pending = 0
        self.out.append(text)
        self.fresh = False

    def _mark(self, mark: str) -> None:
        """An opening mark starts a line (after the owed breaks); nothing is owed after it."""
        if self.pending:
            self.out.append("\n" * self.pending)
            self.pending = 0
        self.out.append(mark)
        self.fresh = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._write("\n")
            self.fresh = True
        elif tag == "li":
            self._block(1)
            ordered = self.lists and self.lists[-1][0]
            self._write(f"{self.lists[-1][1]}. " if ordered else "- ")
            if ordered:
                self.lists[-1][1] += 1
        elif tag in ("ul", "ol"):
            self._block(1 if self.lists else 2)
            start = dict(attrs).get("start") or "1"
            self.lists.append([tag == "ol", int(start) if start.isdigit() else 1])
        elif tag in _PARAGRAPH:
            self._block(2)
            if tag == "blockquote":
                self._mark(_QUOTE_IN)
            elif tag == "pre":
                self._mark(_PRE_IN)
                self.pre += 1
            elif tag == "hr":
                self._write("----")
                self._block(2)
        elif tag in _LINE:
            self._block(1)
        elif tag in ("td", "th"):
            if not self.fresh:
                self._write(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.out)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._write(alt)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "img", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._block(1 if self.lists else 2)
        elif tag in _PARAGRAPH:
            if tag == "blockquote":
                self.out.append(_QUOTE_OUT)
            elif tag == "pre" and self.pre:
                self.out.append(_PRE_OUT)
                self.pre -= 1
            self.pending = 0 if self.fresh else self.pending
            self._block(2)
        elif tag in _LINE and tag != "li":
            self._block(1)
        elif tag == "a" and self.links:
            href, at = self.links.pop()
            label = " ".join("".join(self.out[at:]).split())
            if href and href not in (label, f"mailto:{label}"):
                self._write(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        data = _PRIVATE.sub("", data)
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if self.fresh:
                data = data.lstrip()
        if data:
            self._write(data)


def html_to_text(html: str) -> str:
    """The plain-text alternative of sanitised HTML (stdlib only; entities unescaped)."""
    writer = _TextWriter()
    writer.feed(html)
    writer.close()
    raw = "".join(writer.out)
    if not _MARKS.search(raw):
        return "\n".join(line.strip() for line in raw.split("\n")).strip()
    lines: list[str] = []
    depth = pre = 0
    for line in raw.split("\n"):
        text = line
        closing = (0, 0)
        if _MARKS.search(text):
            # A block's opening mark starts its first line; its closing mark ends its last.
            depth += text.count(_QUOTE_IN)
            pre += text.count(_PRE_IN)
            closing = (text.count(_QUOTE_OUT), text.count(_PRE_OUT))
            text = _MARKS.sub("", text)
        text = text.rstrip() if pre else text.strip()
        lines.append(("> " * depth + text).rstrip() if depth else text)
        depth, pre = max(depth - closing[0], 0), max(pre - closing[1], 0)
    return "\n".join(lines).strip()
