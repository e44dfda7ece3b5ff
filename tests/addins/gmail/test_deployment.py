"""The Gmail add-on's deployment file and admin page.

The file is parsed strictly into ``google.cloud.gsuiteaddons_v1.types.Deployment`` after
removing only the fields listed in ``tests/gmail_types.NEWER_DEPLOYMENT_FIELDS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server.addins.exporters import export_all
from server.addins.gmail.deployment import ENDPOINTS, build_deployment
from server.app import create_app
from tests.conftest import World
from tests.gmail_types import NEWER_DEPLOYMENT_FIELDS, check_deployment

SCOPES = {
    "execute": "https://www.googleapis.com/auth/gmail.addons.execute",
    "compose": "https://www.googleapis.com/auth/gmail.addons.current.action.compose",
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "metadata": "https://www.googleapis.com/auth/gmail.addons.current.message.metadata",
}


def config(**overrides: Any) -> dict[str, Any]:
    cfg = {"PUBLIC_URL": "https://relay.example.com/", "GMAIL_ADDON_NAME": "Relay",
           "GMAIL_ADDON_DRAFT_ACCESS": "METADATA"}
    cfg.update(overrides)
    return cfg


def urls_in(value: Any) -> list[str]:
    """Every string in a JSON value that looks like a URL."""
    if isinstance(value, dict):
        return [u for v in value.values() for u in urls_in(v)]
    if isinstance(value, list):
        return [u for v in value for u in urls_in(v)]
    return [value] if isinstance(value, str) and "://" in value else []


def test_the_deployment_file_parses_strictly_into_googles_type() -> None:
    """Does the file parse into gsuiteaddons' Deployment with no unknown field?"""
    doc = build_deployment(config())
    parsed = check_deployment(doc)
    assert parsed.add_ons.common.name == "Relay"
    assert parsed.add_ons.gmail.compose_trigger.actions[0].run_function == (
        "https://relay.example.com/gmail/compose")
    assert parsed.add_ons.http_options.authorization_header == 1  # SYSTEM_ID_TOKEN
    assert doc["addOns"]["httpOptions"]["granularOauthPermissionSupport"] == "OPT_IN"
    assert NEWER_DEPLOYMENT_FIELDS == ((("addOns", "httpOptions"),
                                        "granularOauthPermissionSupport"),)


def test_a_misspelt_field_would_fail_the_check() -> None:
    """Is the strict parse really strict (an Apps Script field is refused)?"""
    from google.protobuf.json_format import ParseError

    doc = build_deployment(config())
    doc["addOns"]["gmail"]["composeTrigger"]["selectActions"] = []
    with pytest.raises(ParseError):
        check_deployment(doc)


def test_http_runtime_form_and_triggers() -> None:
    """Is it the HTTP form (compose actions, draftAccess, homepage, universal, contextual)?"""
    doc = build_deployment(config())
    gmail = doc["addOns"]["gmail"]
    assert gmail["composeTrigger"]["draftAccess"] == "METADATA"
    assert {"runFunction", "label"} <= set(gmail["composeTrigger"]["actions"][0])
    assert "selectActions" not in gmail["composeTrigger"]
    assert gmail["contextualTriggers"] == [
        {"unconditional": {}, "onTriggerFunction": "https://relay.example.com/gmail/message"}]
    common = doc["addOns"]["common"]
    assert common["homepageTrigger"]["runFunction"] == "https://relay.example.com/gmail/home"
    assert common["logoUrl"] == "https://relay.example.com/gmail/logo.png"
    assert common["openLinkUrlPrefixes"] == ["https://relay.example.com/"]
    assert [a["label"] for a in common["universalActions"]] == ["My email tasks", "Open Relay"]


def test_scopes_follow_draft_access() -> None:
    """Is the message metadata scope there only when draftAccess is METADATA?"""
    on = build_deployment(config())
    off = build_deployment(config(GMAIL_ADDON_DRAFT_ACCESS="NONE"))
    assert on["oauthScopes"] == [SCOPES[k] for k in ("execute", "compose", "email",
                                                     "metadata")]
    assert off["oauthScopes"] == [SCOPES[k] for k in ("execute", "compose", "email")]
    assert off["addOns"]["gmail"]["composeTrigger"]["draftAccess"] == "NONE"
    check_deployment(off)
    with pytest.raises(ValueError):
        build_deployment(config(GMAIL_ADDON_DRAFT_ACCESS="FULL"))


def test_one_path_per_trigger_and_action_all_routed(app: Flask) -> None:
    """Is every URL PUBLIC_URL plus a distinct path, no query string, routed for POST?"""
    doc = build_deployment(config())
    runs = [u for u in urls_in(doc) if u.startswith("https://relay.example.com/gmail/")
            and not u.endswith(".png")]
    assert len(runs) == len(set(runs)) == 4  # home, universal, message, compose
    rules = {r.rule: r.methods for r in app.url_map.iter_rules()}
    for url in runs:
        parts = urlsplit(url)
        assert not parts.query and not parts.fragment
        assert parts.path in ENDPOINTS.values()
        assert "POST" in rules[parts.path]
    assert len(set(ENDPOINTS.values())) == len(ENDPOINTS)


def test_the_file_is_served_without_sign_in(database_url: str) -> None:
    """Does GET /manifests/gmail-deployment.json answer the configured file, unauthenticated?"""
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "t",
                      "PUBLIC_URL": "https://relay.example.com"})
    try:
        resp = app.test_client().get("/manifests/gmail-deployment.json")
        assert resp.status_code == 200
        assert resp.mimetype == "application/json"
        assert resp.get_json() == build_deployment(app.config)
        check_deployment(resp.get_json())
        logo = app.test_client().get("/gmail/logo.png")
        assert logo.status_code == 200 and logo.data.startswith(b"\x89PNG")
    finally:
        app.extensions["relay.engine"].dispose()


def test_relay_manifests_export_writes_the_file(app: Flask, tmp_path: Path) -> None:
    """Does `relay manifests export DIR --only gmail` write gmail-deployment.json?"""
    out = tmp_path / "out"
    written = export_all(app.config, out, ["gmail"])
    assert written == [out / "gmail-deployment.json"]
    assert json.loads(written[0].read_text()) == build_deployment(app.config)


def _sign_in(client: FlaskClient, email: str) -> None:
    client.get("/sign-in")
    with client.session_transaction() as s:
        csrf = s["csrf"]
    resp = client.post("/sign-in", data={"email": email, "password": "secret-pw",
                                         "csrf": csrf})
    assert resp.status_code == 302


def test_admin_page_shows_commands_and_what_is_unset(client: FlaskClient,
                                                     world: World) -> None:
    """Does an admin see the gcloud commands, the Marketplace steps and the unset settings?"""
    _sign_in(client, "admin@a.test")
    resp = client.get("/admin/gmail")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    for text in ("gcloud workspace-add-ons get-authorization",
                 "gcloud workspace-add-ons deployments create relay-gmail",
                 "gcloud workspace-add-ons deployments replace relay-gmail",
                 "gcloud workspace-add-ons deployments install relay-gmail",
                 "Google Workspace Marketplace SDK", "Domain install"):
        assert text in page
    assert page.count("unset: every add-on request is refused (401)") == 2
    assert "Google only calls https:// endpoints" in page  # PUBLIC_URL is http in tests


def test_admin_page_is_for_admins_only(client: FlaskClient, world: World) -> None:
    """Is a rep refused (403) and a signed-out visitor sent to sign in?"""
    assert client.get("/admin/gmail").status_code == 302
    _sign_in(client, "rep@a.test")
    assert client.get("/admin/gmail").status_code == 403


def test_the_deployment_declares_the_widgets_that_fill_to_and_subject() -> None:
    """Does the file list UPDATE_SUBJECT_AND_RECIPIENTS, which the fill answer needs?

    Google's deployment reference: ``addOnWidgetSet`` absent means the default widget set, and
    "update the subject and recipients of a draft" is not in it.
    """
    from google.apps.script.type import AddOnWidgetSet

    from server.addins.gmail.cards import update_draft

    doc = build_deployment(config())
    assert doc["addOns"]["common"]["addOnWidgetSet"] == {
        "usedWidgets": ["UPDATE_SUBJECT_AND_RECIPIENTS"]}
    parsed = check_deployment(doc)
    assert list(parsed.add_ons.common.add_on_widget_set.used_widgets) == [
        AddOnWidgetSet.WidgetType.UPDATE_SUBJECT_AND_RECIPIENTS]
    markup = update_draft(["pat@client.test"], "Hello", "<p>Hi</p>")[
        "renderActions"]["hostAppAction"]["gmailAction"]["updateDraftActionMarkup"]
    assert {"updateToRecipients", "updateSubject"} <= set(markup)


def test_the_exported_deployment_file_declares_the_widgets(tmp_path: Path) -> None:
    """Does ``relay manifests export`` write the widget set into gmail-deployment.json?"""
    export_all(config(), tmp_path, ["gmail"])
    doc = json.loads((tmp_path / "gmail-deployment.json").read_text())
    assert doc["addOns"]["common"]["addOnWidgetSet"]["usedWidgets"] == [
        "UPDATE_SUBJECT_AND_RECIPIENTS"]
