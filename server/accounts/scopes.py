"""What a scoped credential may call: a scope names the API endpoints of one client.

An API token without a scope (``relay token create``) may call the whole API. The Outlook
add-in's tokens (Relay's add-in sign-in, or a Microsoft Entra token) carry the ``outlook``
scope: the task list, one task, its prefill, opened / complete, and the add-in's own API.
"""

from __future__ import annotations

OUTLOOK = "outlook"

#: Flask endpoint names (``blueprint.view``) a scope allows; a name ending in ``.`` allows a
#: whole blueprint.
SCOPES: dict[str, frozenset[str]] = {
    OUTLOOK: frozenset({
        "tasks.list_", "tasks.read", "tasks.opened", "tasks.complete",
        "prefill.prefill", "prefill.ping", "outlook_api.",
    }),
}


def allows(scope: str | None, endpoint: str | None) -> bool:
    """True when a credential of ``scope`` may call ``endpoint`` (None scope: everything)."""
    if scope is None:
        return True
    allowed = SCOPES.get(scope, frozenset())
    if endpoint is None:
        return False
    return endpoint in allowed or endpoint.split(".", 1)[0] + "." in allowed
