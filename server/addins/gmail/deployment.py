"""The Gmail add-on's deployment file (HTTP runtime), built from configuration.

``gcloud workspace-add-ons deployments create|replace NAME --deployment-file=FILE`` takes
it. Every URL in it is ``PUBLIC_URL`` plus one path per trigger and action
(:data:`ENDPOINTS`); the same paths are the blueprint's routes, and each endpoint checks that
the ID token it receives was minted for exactly its own URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SCOPE_EXECUTE = "https://www.googleapis.com/auth/gmail.addons.execute"
SCOPE_COMPOSE = "https://www.googleapis.com/auth/gmail.addons.current.action.compose"
SCOPE_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
SCOPE_METADATA = "https://www.googleapis.com/auth/gmail.addons.current.message.metadata"

#: One path per trigger and action; the deployment file and the routes both use these.
ENDPOINTS = {
    "home": "/gmail/home",
    "home_list": "/gmail/home/list",
    "universal_tasks": "/gmail/universal/tasks",
    "compose": "/gmail/compose",
    "compose_fill": "/gmail/compose/fill",
    "message": "/gmail/message",
    "message_reply": "/gmail/message/reply",
}

#: Widgets outside Google's default set that Relay's answers use (``addOnWidgetSet``; when the
#: field is absent only the default set is available). ``UPDATE_SUBJECT_AND_RECIPIENTS``: the
#: fill actions' ``updateDraftActionMarkup`` sets the draft's To and Subject, not only its body.
#: The cards use only default widgets (text, decorated text, plain buttons).
USED_WIDGETS = ("UPDATE_SUBJECT_AND_RECIPIENTS",)

FILE_NAME = "gmail-deployment.json"
DRAFT_ACCESS = ("NONE", "METADATA")


def public_url(config: Mapping[str, Any]) -> str:
    """``PUBLIC_URL`` without a trailing slash."""
    return str(config.get("PUBLIC_URL") or "").rstrip("/")


def endpoint_url(config: Mapping[str, Any], name: str) -> str:
    """The absolute URL of endpoint ``name`` (the audience its ID tokens must carry)."""
    return public_url(config) + ENDPOINTS[name]


def draft_access(config: Mapping[str, Any]) -> str:
    """``GMAIL_ADDON_DRAFT_ACCESS`` (``METADATA`` or ``NONE``); anything else is an error."""
    value = str(config.get("GMAIL_ADDON_DRAFT_ACCESS") or "NONE").upper()
    if value not in DRAFT_ACCESS:
        raise ValueError(f"GMAIL_ADDON_DRAFT_ACCESS must be METADATA or NONE, not {value!r}")
    return value


def metadata_on(config: Mapping[str, Any]) -> bool:
    """Whether draft metadata (and the message metadata scope) is switched on."""
    return draft_access(config) == "METADATA"


def logo_url(config: Mapping[str, Any]) -> str:
    """``GMAIL_ADDON_LOGO_URL``, or the logo Relay serves itself."""
    return str(config.get("GMAIL_ADDON_LOGO_URL") or public_url(config) + "/gmail/logo.png")


def oauth_scopes(config: Mapping[str, Any]) -> list[str]:
    """The scopes users consent to; message metadata only with ``draftAccess: METADATA``."""
    scopes = [SCOPE_EXECUTE, SCOPE_COMPOSE, SCOPE_EMAIL]
    if metadata_on(config):
        scopes.append(SCOPE_METADATA)
    return scopes


def build_deployment(config: Mapping[str, Any]) -> dict[str, Any]:
    """The deployment resource (``oauthScopes`` and ``addOns``) for ``config``."""

    def url(name: str) -> str:
        return endpoint_url(config, name)

    base = public_url(config)
    return {
        "oauthScopes": oauth_scopes(config),
        "addOns": {
            "common": {
                "name": str(config.get("GMAIL_ADDON_NAME") or "Relay"),
                "logoUrl": logo_url(config),
                "layoutProperties": {"primaryColor": "#2563eb", "secondaryColor": "#1f2937"},
                "addOnWidgetSet": {"usedWidgets": list(USED_WIDGETS)},
                "homepageTrigger": {"runFunction": url("home"), "enabled": True},
                "universalActions": [
                    {"label": "My email tasks", "runFunction": url("universal_tasks")},
                    {"label": "Open Relay", "openLink": base + "/"},
                ],
                "openLinkUrlPrefixes": [base + "/"],
            },
            "gmail": {
                "contextualTriggers": [
                    {"unconditional": {}, "onTriggerFunction": url("message")},
                ],
                "composeTrigger": {
                    "actions": [{"runFunction": url("compose"), "label": "Fill from Relay",
                                 "logoUrl": logo_url(config)}],
                    "draftAccess": draft_access(config),
                },
            },
            "httpOptions": {
                "authorizationHeader": "SYSTEM_ID_TOKEN",
                "granularOauthPermissionSupport": "OPT_IN",
            },
        },
    }


def render(config: Mapping[str, Any]) -> str:
    """The deployment file's text (pretty JSON, newline at the end)."""
    return json.dumps(build_deployment(config), indent=2) + "\n"


def export_files(config: Mapping[str, Any]) -> dict[str, bytes]:
    """The deployment file for ``config``, by file name (``relay manifests export`` writes it)."""
    return {FILE_NAME: render(config).encode()}
