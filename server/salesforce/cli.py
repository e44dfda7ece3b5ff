"""``relay salesforce …`` commands."""

from __future__ import annotations

import click


@click.group("salesforce")
def group() -> None:
    """Salesforce connection commands."""


@group.command("reseal")
def reseal() -> None:
    """Re-encrypt stored Salesforce tokens with the first key of ENCRYPTION_KEYS (rotation)."""
    from server.cli import _app
    from server.crypto import KeyConfigError, app_keyring
    from server.db import session_scope
    from server.salesforce.service import reseal_tokens

    app = _app()
    try:
        ring = app_keyring(app)
        with session_scope(app) as session:
            changed = reseal_tokens(session, ring)
    except KeyConfigError as exc:
        raise click.ClickException(f"{exc}; keep the old key in ENCRYPTION_KEYS (after the new "
                                   "one) until every value is resealed") from None
    click.echo(f"{changed} token{'s' if changed != 1 else ''} resealed with key {ring.current}")
