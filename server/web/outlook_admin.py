"""The admin page of the Outlook add-in: downloads, the manifest URL, deployment steps, checks."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app

from server.accounts.models import Role
from server.addins import manifests
from server.addins.versions import outlook_rendered
from server.web.views import page, require_signed_in

bp = Blueprint("outlook_admin", __name__)


@bp.get("/admin/outlook")
def outlook_admin() -> Any:
    """Deploy the Outlook add-in: what to download or paste, and what is wrong first (admins)."""
    user = require_signed_in()
    if user.role is not Role.ADMIN:
        abort(403)
    cfg = current_app.config
    source = manifests.source_from_config(cfg)
    rendered, _ = outlook_rendered(current_app._get_current_object())  # type: ignore[attr-defined]
    return page("web/admin/outlook.html", user,
                source=source, version=rendered.version,
                manifest_url=f"{source.base}/manifests/outlook.xml",
                json_url=f"{source.base}/manifests/outlook.json",
                package_url=f"{source.base}/manifests/outlook-app.zip",
                problems=manifests.validation_problems(cfg),
                ms_configured=bool(cfg.get("MS_CLIENT_ID")))
