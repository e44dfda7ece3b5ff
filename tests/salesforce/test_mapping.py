"""Pure Salesforce decisions: the subject template, field mapping, backoff, PKCE."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.salesforce import mapping
from server.salesforce.auth import jwt_assertion, pkce_pair, signature_valid

ACT = mapping.Activity(activity_type="Call", activity_subject="Intro call (Ann Lee)",
                       sales_campaign_name="Q3", sales_campaign_day=3, sales_campaign_step=2)


def test_subject_template_fills_every_field():
    """Are the five fields filled, with or without spaces inside the braces?"""
    template = ("{{activity_type}}|{{ activity_subject }}|{{sales_campaign_name}}|"
                "{{sales_campaign_day}}|{{sales_campaign_step}}")
    assert mapping.render_subject(template, ACT) == "Call|Intro call (Ann Lee)|Q3|3|2"


def test_subject_line_breaks_removed_and_cut_to_255():
    """Are line breaks removed and the subject at most 255 characters?"""
    act = mapping.Activity(activity_type="Email",
                           activity_subject="Line one\r\nline two\n" + "x" * 400)
    subject = mapping.render_subject("{{activity_type}}:\n{{activity_subject}}", act)
    assert "\n" not in subject and "\r" not in subject
    assert subject.startswith("Email: Line one line two xxx")
    assert len(subject) == 255


def test_unknown_template_fields_are_named():
    """Does validation name each unknown field and accept the known ones?"""
    assert mapping.template_errors("{{activity_type}} {{ sales_campaign_step }}") == []
    errors = mapping.template_errors("{{first_name}} {{activity_type}} {{campaign}}")
    assert len(errors) == 2
    assert errors[0].startswith("unknown field {{first_name}}")
    assert errors[1].startswith("unknown field {{campaign}}")
    assert mapping.template_errors("{{activity_type}") != []


def test_task_fields_map_priority_date_and_details():
    """Is a high-priority task due late UTC dated in the rep's zone, Not Started?"""
    due = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    fields = mapping.task_fields(template="{{activity_subject}}", activity=ACT,
                                 details="Call before noon", priority="high", due_at=due,
                                 tz="Asia/Tokyo", who_id="003000000000001")
    assert fields == {"Subject": "Intro call (Ann Lee)", "Status": "Not Started",
                      "Priority": "High", "ActivityDate": "2026-11-25",
                      "Description": "Call before noon", "WhoId": "003000000000001"}
    assert mapping.task_fields(template="x", activity=ACT, details="", priority="normal",
                               due_at=due, tz="UTC", who_id="w")["Priority"] == "Normal"


def test_email_and_reply_fields():
    """Are a sent email and a reply completed Tasks of Type Email with an excerpt?"""
    at = datetime(2026, 11, 24, 10, tzinfo=UTC)
    email = mapping.email_fields(template="{{activity_type}}: {{activity_subject}}",
                                 activity=mapping.Activity("Email", "Hello"),
                                 body_text="Hi\n\n\n\nthere", sent_at=at, tz="UTC",
                                 who_id="w")
    assert (email["Subject"], email["Status"], email["Type"], email["Description"]) == (
        "Email: Hello", "Completed", "Email", "Hi\n\nthere")
    reply = mapping.reply_fields(subject="Re: Hello", body_text=None, received_at=at,
                                 tz="UTC", who_id="w")
    assert reply["Subject"] == "Reply: Re: Hello" and reply["Description"] == ""


def test_backoff_doubles_and_is_capped():
    """Does the retry delay double from 30 s and stop at one hour?"""
    assert [mapping.backoff(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert mapping.backoff(30) == timedelta(hours=1)


def test_pkce_and_token_signature():
    """Is the PKCE challenge the S256 of the verifier, and a token signature checked?"""
    import base64
    import hashlib
    import hmac

    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    sig = base64.b64encode(hmac.new(b"sec", b"https://id/1" + b"123", hashlib.sha256)
                           .digest()).decode()
    assert signature_valid("sec", "https://id/1", "123", sig)
    assert not signature_valid("other", "https://id/1", "123", sig)


def test_jwt_assertion_claims():
    """Does the JWT bearer assertion carry iss, sub, aud and a three-minute exp, RS256?"""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    now = datetime(2026, 11, 24, 10, tzinfo=UTC)
    token = jwt_assertion("client", "int@acme.test", "https://login.salesforce.com/", pem, now)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"],
                        audience="https://login.salesforce.com",
                        options={"verify_exp": False})
    assert claims == {"iss": "client", "sub": "int@acme.test",
                      "aud": "https://login.salesforce.com",
                      "exp": int((now + timedelta(minutes=3)).timestamp())}
