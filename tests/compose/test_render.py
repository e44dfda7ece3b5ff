"""The template language and renderer, as pure functions (E4–E7)."""

from __future__ import annotations

from typing import Any

import pytest
from jinja2 import nodes

from server.compose import render
from server.compose.render import (
    MAX_OUTPUT,
    OutputTooLarge,
    Rendered,
    TemplateInvalid,
    TemplateProblem,
    check_template,
    company_friendly,
    html_to_text,
    render_email,
    render_text,
    sanitise_html,
    template_prompts,
)

SENDER = {"name": "Ana Rep", "title": "Account Executive", "email": "ana@relay.test"}


def contact(**values: Any) -> dict[str, Any]:
    """A contact with every field set, overridden by ``values``."""
    base: dict[str, Any] = {"first_name": "Pat", "last_name": "Doe", "title": "CTO",
                            "company": "Acme, Inc.", "email": "pat@acme.test",
                            "custom_fields": {"phone": "+33 1 23 45 67 89"}}
    base.update(values)
    return base


def problems(source: str) -> list[str]:
    """The problems of a template as "line L, column C: message"."""
    return [str(p) for p in check_template(source)]


# -- E4: fields ---------------------------------------------------------------------------


def test_E4_every_field_renders_its_value():
    """Do the contact, sender and custom fields render the contact's and sender's values?"""
    body = ("<p>{{first_name}} {{last_name}}, {{title}} at {{company}} ({{company_friendly}})"
            "</p><p>{{email}} {{custom_field_phone}}</p><p>{{my_name}}, {{my_title}}, "
            "{{ my_email }}</p>")
    r = render_email("For {{ first_name }}", body, contact(), SENDER)
    assert r.subject == "For Pat"
    assert r.html == ("<p>Pat Doe, CTO at Acme, Inc. (Acme)</p><p>pat@acme.test "
                      "+33 1 23 45 67 89</p><p>Ana Rep, Account Executive, ana@relay.test</p>")
    assert r.text == ("Pat Doe, CTO at Acme, Inc. (Acme)\n\npat@acme.test +33 1 23 45 67 89"
                      "\n\nAna Rep, Account Executive, ana@relay.test")
    assert (r.prompts, r.missing, r.blocked) == ([], [], False)


@pytest.mark.parametrize(("company", "friendly"), [
    ("Acme, Inc.", "Acme"), ("Acme Inc", "Acme"), ("Initech LLC", "Initech"),
    ("Globex Ltd.", "Globex"), ("Hooli Corporation", "Hooli"), ("Umbrella Corp.", "Umbrella"),
    ("Siemens GmbH", "Siemens"), ("Volvo AB", "Volvo"), ("Renault S.A.", "Renault"),
    ("Dassault SAS", "Dassault"), ("Foo GmbH & Co. KG", "Foo"), ("Wonka Co.", "Wonka"),
    ("Acme Corporation,", "Acme"), ("Apple", "Apple"), ("Inc.", "Inc."),
])
def test_E4_company_friendly_drops_the_legal_form(company: str, friendly: str):
    """Is company_friendly the company without Inc., LLC, GmbH, AB… (and never empty)?"""
    assert company_friendly(company) == friendly


def test_E4_custom_fields_are_read_from_the_contacts_custom_fields():
    """Does {{custom_field_<name>}} read that custom field, numbers included, any case?"""
    c = contact(custom_fields={"Industry": "software", "seats": 40})
    r = render_email("", "{{custom_field_industry}}/{{custom_field_seats}}", c, SENDER)
    assert r.html == "software/40"


def test_E4_marketo_default_spelling_is_accepted_as_written():
    """Is `{{first_name | default: "there"}}` accepted, and the same as Jinja's spelling?"""
    for source in ('Hi {{first_name | default: "there"}}!', "Hi {{first_name|default:'there'}}!",
                   'Hi {{ first_name | default("there") }}!'):
        assert check_template(source) == []
        assert render_text(source, contact(first_name=None), SENDER) == ("Hi there!", [])
        assert render_text(source, contact(), SENDER) == ("Hi Pat!", [])


def test_E4_marketo_rewrite_stays_inside_fields_and_keeps_positions():
    """Is `default: "x"` outside {{ }} left as text, and a later error still at its column?"""
    source = 'Note default: "x" stays.\n{{first_name | default: "a"}} {{ frist }}'
    assert render_text('Note default: "x" stays.', contact(), SENDER)[0] == (
        'Note default: "x" stays.')
    assert problems(source) == ['line 2, column 34: unknown field "frist"']
    source = '{{ title | default: "a }} b" }}'  # "}}" inside the quoted default
    assert render_text(source, contact(title=""), SENDER) == ("a }} b", [])


# -- E5: missing fields -------------------------------------------------------------------


def test_E5_names_render_blank_and_company_renders_your_company():
    """Without a value or default, do names and title render blank and company "your company"?"""
    c = contact(first_name=None, last_name="", title="   ", company=None)
    r = render_email("Hi {{first_name}}", "<p>[{{first_name}}][{{last_name}}][{{title}}] "
                     "{{company}} / {{company_friendly}}</p>", c, SENDER)
    assert not r.blocked
    assert r.subject == "Hi "
    assert r.html == "<p>[][][] your company / your company</p>"


def test_E5_a_default_replaces_an_empty_or_blank_value():
    """Does a field that is None, empty or whitespace render its default, even a blocking one?"""
    for value in (None, "", "  \n "):
        c = contact(first_name=value, email=value)
        assert render_text('{{first_name | default: "there"}} {{email | default: "-"}}', c,
                           SENDER) == ("there -", [])


def test_E5_a_missing_field_blocks_the_whole_email():
    """Does a missing email, sender or custom field block the email, naming each field once?"""
    c = contact(email=None, custom_fields={})
    r = render_email("Call {{custom_field_phone}}",
                     "<p>Hi {{first_name}}, {{custom_field_phone}} {{email}} {{my_title}}</p>",
                     c, {"name": "Ana", "title": "", "email": "ana@relay.test"})
    assert r.blocked
    assert r.missing == ["custom_field_phone", "email", "my_title"]
    # Never half-rendered: nothing of the template comes back.
    assert (r.subject, r.html, r.text) == ("", "", "")
    assert render_text("Call {{custom_field_phone}}", c, SENDER) == ("", ["custom_field_phone"])


def test_E5_blocked_result_still_lists_prompts():
    """Does a blocked email still say which prompts it has (the task shows both)?"""
    r = render_email("", "{{! Say hello}} {{my_email}}", contact(), {})
    assert r == Rendered("", "", "", ["Say hello"], ["my_email"])


# -- E6: prompts --------------------------------------------------------------------------


def test_E6_prompts_are_listed_and_stay_visible():
    """Are prompts listed in order and left in the email as the literal, escaped text?"""
    body = ("<p>Hi {{first_name}},</p>\n<p>{{! Introduce yourself}}</p>\n"
            "<p>{{!Mention <b>it</b>}}</p>")
    assert template_prompts(body) == ["Introduce yourself", "Mention <b>it</b>"]
    r = render_email("{{! A subject}} for {{first_name}}", body, contact(), SENDER)
    assert r.prompts == ["A subject", "Introduce yourself", "Mention <b>it</b>"]
    assert r.subject == "{{! A subject}} for Pat"
    assert "<p>{{! Introduce yourself}}</p>" in r.html
    assert "<p>{{!Mention &lt;b&gt;it&lt;/b&gt;}}</p>" in r.html
    assert "{{!Mention <b>it</b>}}" in r.text
    assert not r.blocked  # a prompt is for the compose window to refuse, not a missing field


def test_E6_a_prompt_over_several_lines_keeps_later_positions():
    """Does a prompt spanning lines leave the line numbers of later problems right?"""
    assert problems("{{! one\ntwo\nthree}}\n  {{nope}}") == [
        'line 4, column 5: unknown field "nope"']


# -- E7: only fields; positions of problems -----------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ ''.__class__.__mro__ }}",
     "line 1, column 6: only fields and the default filter are allowed; found attribute access"),
    ("Hi\n  {{ cycler.__init__.__globals__ }}",
     "line 2, column 12: only fields and the default filter are allowed; found attribute access"),
    ("{{ self }}", 'line 1, column 4: unknown field "self"'),
    ("{{ self._TemplateReference__context }}",
     "line 1, column 8: only fields and the default filter are allowed; found attribute access"),
    ("{{ range(10**9) }}",
     "line 1, column 9: only fields and the default filter are allowed; found a function call"),
    ("{{ first_name['__class__'] }}",
     "line 1, column 14: only fields and the default filter are allowed; found item access"),
    ("{{ lipsum.__globals__['os'] }}",
     "line 1, column 10: only fields and the default filter are allowed; found attribute access"),
    ("{{ first_name | attr('__class__') }}",
     'line 1, column 17: only the default filter is allowed; found filter "attr"'),
    ("{{ first_name * 999999999 }}",
     "line 1, column 1: only fields and the default filter are allowed; found arithmetic"),
    ("{{ 'x' }}", "line 1, column 1: only fields and the default filter are allowed; found a "
                  "literal value (write plain text outside {{ }})"),
])
def test_E7_sandbox_escapes_are_rejected_with_line_and_column(source: str, expected: str):
    """Is each known sandbox escape a problem at its line and column, never rendered?"""
    assert problems(source) == [expected]
    with pytest.raises(TemplateInvalid) as exc:
        render_text(source, contact(), SENDER)
    assert [str(p) for p in exc.value.problems] == [expected]


def test_E7_statements_are_rejected_with_their_position():
    """Are {% for %} bombs, macros, sets, includes and comments each rejected where they start?"""
    source = ("<p>ok</p>\n"
              "{% for a in range(9999) %}{% for b in range(9999) %}x{% endfor %}{% endfor %}\n"
              "  {% macro m() %}{{ m() }}{% endmacro %}\n"
              "{% set x = 1 %}{% include 'other' %}{# note #}")
    found = check_template(source)
    block = "only fields and the default filter are allowed; found a {% … %} block"
    assert [(p.line, p.column) for p in found] == [
        (2, 1), (2, 27), (2, 54), (2, 66), (3, 3), (3, 22), (3, 27), (4, 1), (4, 16), (4, 37)]
    assert all(p.message.startswith(block) for p in found[:5])
    assert found[5].message.endswith("found a function call")
    assert found[-1].message.endswith("found a {# … #} comment")


def test_E7_unknown_fields_are_named_with_a_suggestion():
    """Is an unknown field named at its line and column, with the field it resembles?"""
    source = "<p>Hi,</p>\n<p>Dear</p>\n<p> {{frist_name}} {{ favourite_colour }}</p>"
    assert problems(source) == [
        'line 3, column 7: unknown field "frist_name" (did you mean "first_name"?)',
        'line 3, column 23: unknown field "favourite_colour"',
    ]
    assert problems("{{ custom_field_ }}") == [
        'line 1, column 4: unknown field "custom_field_" (custom fields are written '
        '"custom_field_<name>")']


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ first_name ! }}", "line 1, column 15: syntax error: unexpected character '!'"),
    ("a\n{{ first_name", 'line 2, column 1: this field is not closed; end it with "}}"'),
    ("{{ }}", "line 1, column 1: empty field {{ }}: write a field name, e.g. {{first_name}}"),
    ("{{ first_name | default: there }}", "line 1, column 15: the default filter takes one "
                                          'quoted text, e.g. {{first_name | default: "there"}}'),
    ("{{ first_name | default(title) }}", "line 1, column 17: the default filter takes one "
                                          'quoted text, e.g. {{first_name | default: "there"}}'),
    ("{{ first_name first_name }}",
     "line 1, column 1: syntax error: expected token 'end of print statement', got 'first_name'"),
])
def test_E7_syntax_errors_have_a_line_and_column(source: str, expected: str):
    """Is each syntax error reported with its line and a best-effort column?"""
    assert problems(source) == [expected]


def test_E7_every_expression_but_a_field_and_its_default_is_refused():
    """Is every Jinja expression node that could loop, call or recurse refused by the walk?

    The walk is an allowlist: any node class other than a field name and the ``default``
    filter (and template text) is a problem, so there is nothing left that could loop.
    """
    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    refused = 0
    for cls in subclasses(nodes.Expr) - {nodes.Name, nodes.Filter, nodes.Expr}:
        if getattr(cls, "abstract", False):
            continue
        node = object.__new__(cls)
        for name in cls.fields:
            object.__setattr__(node, name, None)
        assert render._expr_problem(node) is not None, cls
        refused += 1
    assert refused > 20
    name = nodes.Name("first_name", "load")
    assert render._expr_problem(name) is None
    ok = nodes.Filter(name, "default", [nodes.Const("x")], [], None, None)
    assert render._expr_problem(ok) is None
    for bad in (nodes.Filter(name, "default", [nodes.Const(1)], [], None, None),
                nodes.Filter(name, "default", [], [nodes.Keyword("x", nodes.Const("y"))],
                             None, None),
                nodes.Filter(name, "map", [nodes.Const("x")], [], None, None),
                nodes.Filter(None, "default", [nodes.Const("x")], [], None, None)):
        assert render._expr_problem(bad) is not None


def test_E7_the_sandbox_has_no_globals_and_one_filter():
    """Does the environment offer no globals (range, cycler…), no tests and only `default`?"""
    for html in (True, False):
        env = render._environment(html)
        assert env.globals == {} and env.tests == {} and list(env.filters) == ["default"]


def test_E7_a_template_is_compiled_once(monkeypatch: pytest.MonkeyPatch):
    """Is a template compiled once however many contacts it is rendered for?"""
    env = render._environment(True)
    calls: list[str] = []
    original = env.from_string

    def counting(source: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(source)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(env, "from_string", counting)
    body = "<p>compiled once {{first_name}} {{company}}</p>"
    for name in ("Ada", "Bob", "Cy", "Ada"):
        assert render_email("", body, contact(first_name=name), SENDER).html == (
            f"<p>compiled once {name} Acme, Inc.</p>")
    assert len(calls) == 1


def test_E7_output_is_capped():
    """Is a rendered email over 256 KB refused with OutputTooLarge, not returned?"""
    big = "x" * (MAX_OUTPUT + 1)
    with pytest.raises(OutputTooLarge, match="256 KB"):
        render_email("", "<p>{{custom_field_notes}}</p>",
                     contact(custom_fields={"notes": big}), SENDER)
    with pytest.raises(OutputTooLarge):
        render_text("{{custom_field_notes}}", contact(custom_fields={"notes": big}), SENDER)
    # Many fields, each within bounds, that add up past the cap.
    body = "{{custom_field_notes}}" * 40
    with pytest.raises(OutputTooLarge):
        render_email("", body, contact(custom_fields={"notes": "y" * 8000}), SENDER)
    assert issubclass(OutputTooLarge, ValueError)


def test_a_stored_template_that_no_longer_passes_is_not_rendered():
    """Does rendering a template that fails the check raise TemplateInvalid with its problems?"""
    with pytest.raises(TemplateInvalid) as exc:
        render_email("ok", "{% for x in y %}{% endfor %}", contact(), SENDER)
    assert exc.value.problems[0] == TemplateProblem(
        1, 1, "only fields and the default filter are allowed; found a {% … %} block (loops, "
              "conditions and other statements are not supported)")


# -- inert contact values, sanitising, plain text -----------------------------------------


def test_E7_contact_values_are_inert():
    """Do <script>, javascript: links and CR/LF in a contact's fields render harmless?"""
    c = contact(first_name='<script>alert("x")</script>',
                last_name="Doe\r\nBcc: victim@example.com",
                custom_fields={"site": "javascript:alert(1)", "img": "x\" onerror=\"alert(1)"})
    r = render_email("Hi {{first_name}} {{last_name}}",
                     '<p>{{first_name}} {{last_name}}</p><a href="{{custom_field_site}}">site</a>'
                     '<img src="https://cdn.test/a.png" alt="{{custom_field_img}}">', c, SENDER)
    assert "\r" not in r.subject and "\n" not in r.subject
    assert r.subject == 'Hi <script>alert("x")</script> Doe Bcc: victim@example.com'
    assert "<script" not in r.html and "&lt;script&gt;" in r.html
    assert "javascript:" not in r.html
    assert '<a rel="noopener noreferrer">site</a>' in r.html  # the link is dropped, text kept
    # The quote cannot close the attribute: the handler stays text inside alt.
    assert '<img src="https://cdn.test/a.png" alt="x&quot; onerror=&quot;alert(1)">' in r.html
    assert r.text.startswith('<script>alert("x")</script> Doe')


def test_sanitiser_keeps_the_email_safe_allowlist():
    """Are scripts, handlers and javascript: links removed, styles and safe links kept?"""
    dirty = ('<div style="color: red; position: fixed"><script>alert(1)</script>'
             '<p onclick="x()"><a href="javascript:alert(1)">bad</a> '
             '<a href="https://relay.test/x?a=1&amp;b=2">good</a> '
             '<a href="mailto:ana@relay.test">mail</a> <a href="ftp://x">ftp</a></p>'
             '<table><tr><td style="padding: 4px" width="50">cell</td></tr></table>'
             '<iframe src="https://evil.test"></iframe><font color="#333">f</font></div>')
    clean = sanitise_html(dirty)
    assert clean == (
        '<div style="color:red"><p><a rel="noopener noreferrer">bad</a> '
        '<a href="https://relay.test/x?a=1&amp;b=2" rel="noopener noreferrer">good</a> '
        '<a href="mailto:ana@relay.test" rel="noopener noreferrer">mail</a> '
        '<a rel="noopener noreferrer">ftp</a></p>'
        '<table><tbody><tr><td style="padding:4px" width="50">cell</td></tr></tbody></table>'
        '<font color="#333">f</font></div>')


def test_plain_text_alternative_is_derived_from_the_html():
    """Are paragraphs, breaks, links, lists, quotes and entities turned into readable text?"""
    html = ('<p>Hi&nbsp;<b>Pat</b> &amp; team,</p><p>line one<br>line two</p>'
            '<ul><li>first</li><li><a href="https://relay.test/demo">the demo</a></li></ul>'
            '<ol><li>a</li><li>b</li></ol>'
            '<blockquote><p>On Monday, Ana wrote:</p><p>earlier</p></blockquote>'
            '<div>d1</div><div>d2 <a href="mailto:ana@relay.test">ana@relay.test</a></div>')
    assert html_to_text(html) == (
        "Hi Pat & team,\n\nline one\nline two\n\n- first\n- the demo "
        "(https://relay.test/demo)\n\n1. a\n2. b\n\n> On Monday, Ana wrote:\n>\n> earlier\n\n"
        "d1\nd2 ana@relay.test")


def test_render_accepts_objects_with_attributes():
    """Can the contact and sender be model objects rather than mappings?"""
    class Obj:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    c = Obj(first_name="Ada", last_name=None, title=None, company="Engines Ltd",
            email="ada@x.test", custom_fields={})
    assert render_text("{{first_name}} at {{company_friendly}} from {{my_name}}", c,
                       Obj(name="Ana", title="", email="a@x")) == ("Ada at Engines from Ana", [])
