"""The application factory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

from server import db
from server.config import load_config

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"


def _refuse_nul_in_forms() -> None:
    """Refuse a page's form or query string holding a NUL character (422).

    PostgreSQL refuses NUL in text, and no form field needs one. The API's JSON bodies and
    query strings are checked by their models, which name the field (server/api/operations).
    """
    from flask import abort, request

    if request.path.startswith("/api/"):
        return
    for values in (request.args, request.form if request.method == "POST" else {}):
        for key, value in values.items(multi=True) if values else ():
            if "\x00" in key or "\x00" in value:
                abort(422, description="a form field contains a NUL character")


#: Headers every response carries unless its blueprint set its own (the Outlook add-in's
#: pages keep the frame-ancestors that lets Outlook frame them): no other site may frame a
#: page (the signed-in compose window included), no content is sniffed into another type,
#: and other sites are sent the origin only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def _security_headers(resp: Any) -> Any:
    """Add :data:`SECURITY_HEADERS` the response does not already have."""
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Relay Flask app; ``test_config`` overrides the environment's configuration."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
    )
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.from_mapping(load_config(Path(app.instance_path)))
    if test_config:
        app.config.from_mapping(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # These libraries log whole token responses (refresh tokens included) at DEBUG: they stay
    # at WARNING whatever the root level, so no secret reaches a log (CONVENTIONS 10).
    for name in ("requests_oauthlib", "oauthlib", "msal", "google_auth_oauthlib"):
        logging.getLogger(name).setLevel(logging.WARNING)

    db.init_app(app)

    from server.api import errors

    errors.init_app(app)
    app.before_request(_refuse_nul_in_forms)
    # Registered first, so it runs after every other after_request hook (Flask runs them in
    # reverse order of registration, blueprints' before the app's).
    app.after_request(_security_headers)

    from server.accounts import throttle

    throttle.init_app(app)

    from server.accounts import views as token_views

    app.register_blueprint(token_views.bp)
    app.register_blueprint(token_views.pages)

    from server.campaigns import views as campaign_views
    from server.compose import prefill_views
    from server.compose import views as template_views
    from server.contacts import views as contact_views
    from server.feed import views as feed_views
    from server.sending import schedule_views as outbox_views
    from server.tasks import views as task_views
    from server.web import views as web_views

    for module in (contact_views, template_views, campaign_views, task_views, feed_views,
                   web_views, prefill_views):
        app.register_blueprint(module.bp)
    app.register_blueprint(outbox_views.bp)

    from server.mailboxes import views as mailbox_views
    from server.sending import views as send_views

    app.register_blueprint(send_views.bp)

    app.register_blueprint(mailbox_views.bp)
    app.register_blueprint(mailbox_views.callback_bp)

    from server.web import mailbox as mailbox_pages

    app.register_blueprint(mailbox_pages.bp)
    for module in (campaign_views,):
        if hasattr(module, "enrollments_bp"):
            app.register_blueprint(module.enrollments_bp)

    from server.addins.gmail import views as gmail_views

    gmail_views.init_app(app)

    from server.web import campaigns as campaign_pages
    from server.web import templates_pages

    app.register_blueprint(campaign_pages.bp)
    app.register_blueprint(templates_pages.bp)

    from server.addins.outlook import views as outlook_views
    from server.web import outlook_admin

    outlook_views.init_app(app)
    app.register_blueprint(outlook_admin.bp)

    from server.salesforce import views as salesforce_views
    from server.web import salesforce_admin as salesforce_pages

    app.register_blueprint(salesforce_views.bp)
    app.register_blueprint(salesforce_pages.bp)

    from server import metrics

    app.register_blueprint(metrics.bp)

    @app.get("/openapi.json")
    def openapi() -> Any:
        """The OpenAPI 3.1 document of every /api endpoint."""
        from server.api.operations import openapi_document

        return jsonify(openapi_document("Relay API", VERSION, app.config["PUBLIC_URL"]))

    @app.get("/healthz")
    def healthz() -> Any:
        """Liveness: the process answers and the database is reachable."""
        from sqlalchemy import text

        db.get_session().execute(text("SELECT 1"))
        return jsonify({"ok": True})

    return app
