"""The ``relay`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask
from sqlalchemy import select

from server.accounts.models import Role, User
from server.db import dispose, session_scope


def _app() -> Flask:
    """Build the app for one command; its engine is disposed when the command ends."""
    from server.app import create_app

    app = create_app()
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        # Without this every command leaves its pool's connections open until garbage
        # collection (which on PostgreSQL keeps server backends around).
        ctx.call_on_close(lambda: dispose(app))
    return app


def _no_user(email: str) -> click.ClickException:
    return click.ClickException(
        f"no user with email {email}; create one with "
        f"`relay user create --email {email} --name NAME --org ORG`")


@click.group()
def main() -> None:
    """Relay: sales campaigns, email tasks and native Gmail / Outlook compose."""


@main.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to DATABASE_URL (default: instance/relay.sqlite3)."""
    from server.migrations import upgrade

    app = _app()
    upgrade(app.config["DATABASE_URL"])
    click.echo("database is up to date")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Run the web server (development server; use gunicorn in production)."""
    app = _app()
    app.run(host=host, port=port, threaded=True)


@main.command()
@click.option("--once", is_flag=True, help="do one pass and exit")
def worker(once: bool) -> None:
    """Process due work: scheduled starts, sends, mailbox and Salesforce sync.

    SIGTERM or SIGINT drains (the send in flight finishes, claimed emails not started are
    handed back) and exits 0 within SEND_STOP_SECONDS; a second signal exits at once.
    Refuses to start (exit 2) when the SEND_* settings cannot work.
    """
    import threading

    from server.config import worker_problems
    from server.worker import drain_on_signals, run

    app = _app()
    problems = worker_problems(app.config)
    if problems:
        for problem in problems:
            click.echo(f"Error: {problem}", err=True)
        click.echo("relay worker did not start: fix the settings above.", err=True)
        sys.exit(2)
    stop = threading.Event()
    with drain_on_signals(stop, float(app.config.get("SEND_STOP_SECONDS") or 30)):
        run(app, stop, once=once)


@main.command()
def status() -> None:
    """Print the queue figures (the same as GET /metrics): emails, mailboxes, Salesforce."""
    from server import metrics

    app = _app()
    session = app.extensions["relay.sessionmaker"]()
    try:
        figures = metrics.queue_figures(session, metrics.utcnow())
    finally:
        session.close()
    click.echo(metrics.status_table(figures))


@main.group()
def user() -> None:
    """User commands."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--org", "org_name", required=True, help="org name (created if missing)")
@click.option("--role", type=click.Choice([r.value for r in Role]), default="rep",
              show_default=True)
@click.option("--title", default="")
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--password", default=None, help="prompted for when omitted")
def user_create(email: str, name: str, org_name: str, role: str, title: str, timezone: str,
                password: str | None) -> None:
    """Create a user who can sign in to the web app."""
    from server.accounts.service import AccountError, create_user, get_or_create_org

    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    app = _app()
    try:
        with session_scope(app) as session:
            org = get_or_create_org(session, org_name)
            created = create_user(session, org=org, email=email, name=name, role=Role(role),
                                  title=title, timezone=timezone, password=password)
            click.echo(f"created {created.role.value} {created.email} (id {created.id}) "
                       f"in org {org.name}")
    except AccountError as exc:
        raise click.ClickException(f"{exc.field}: {exc.message}") from None


@main.group()
def mailboxes() -> None:
    """Mailbox connection commands."""


@mailboxes.command("rekey")
def mailboxes_rekey() -> None:
    """Re-encrypt every stored mailbox secret with the current (first) ENCRYPTION_KEYS key.

    Rotate by putting a new kid:key first in ENCRYPTION_KEYS, running this, then removing the
    old key.
    """
    from server.crypto import KeyConfigError, keyring_from_config
    from server.mailboxes.lifecycle import reencrypt_secrets

    app = _app()
    try:
        ring = keyring_from_config(dict(app.config), app.instance_path)
        with session_scope(app) as session:
            changed = reencrypt_secrets(session, ring)
    except KeyConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"re-encrypted {changed} secret(s) with key {ring.current}")


@main.group()
def token() -> None:
    """API token commands."""


@token.command("create")
@click.option("--email", required=True, help="the user the token acts as")
@click.option("--name", default="cli", show_default=True)
def token_create(email: str, name: str) -> None:
    """Print a new API token for a user (shown once; only its hash is stored)."""
    from server.accounts.service import create_token

    app = _app()
    with session_scope(app) as session:
        found = session.scalar(select(User).where(User.email == email.strip().lower()))
        if found is None:
            raise _no_user(email)
        click.echo(create_token(session, found, name,
                                days=int(app.config.get("API_TOKEN_DAYS") or 90)))


@token.command("revoke")
@click.option("--email", required=True, help="whose token")
@click.option("--prefix", default=None, help="the token's first 8 characters (see /tokens)")
@click.option("--id", "token_id", type=int, default=None, help="the token's id")
@click.option("--all", "all_", is_flag=True, help="every token of the user")
def token_revoke(email: str, prefix: str | None, token_id: int | None, all_: bool) -> None:
    """Revoke a user's API token (by prefix or id), or all of them with --all."""
    from server.accounts.service import revoke_tokens

    if not all_ and prefix is None and token_id is None:
        raise click.UsageError("give --prefix, --id or --all")
    app = _app()
    with session_scope(app) as session:
        found = session.scalar(select(User).where(User.email == email.strip().lower()))
        if found is None:
            raise _no_user(email)
        count = revoke_tokens(session, found, token_id=token_id, prefix=prefix)
    click.echo(f"revoked {count} token(s) of {found.email}")


@main.group()
def contacts() -> None:
    """Contact commands."""


@contacts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--email", required=True, help="the rep who will own the contacts")
@click.option("--skip-errors", is_flag=True, help="import the good rows of a file with bad ones")
def contacts_import(file: Path, email: str, skip_errors: bool) -> None:
    """Import contacts from a CSV file with a header row, with a progress bar."""
    from tqdm import tqdm

    from server.contacts.service import import_csv

    app = _app()
    with session_scope(app) as session:
        owner = session.scalar(select(User).where(User.email == email.strip().lower()))
        if owner is None:
            raise _no_user(email)
        with file.open(encoding="utf-8-sig", newline="") as fh:
            total = max(sum(1 for _ in fh) - 1, 0)
            fh.seek(0)
            with tqdm(total=total, unit="row", file=sys.stderr, disable=None) as bar:
                report = import_csv(session, owner, fh, skip_errors=skip_errors,
                                    progress=bar.update)
    for err in report.errors:
        click.echo(f"{file.name}: {err.field}: {err.message}", err=True)
    if report.errors and not report.stored:
        raise click.ClickException(
            f"{len(report.errors)} bad rows; nothing was imported. Fix them, or pass "
            "--skip-errors to import the good rows.")
    click.echo(f"imported {report.created} contacts ({report.duplicates} already present, "
               f"{len(report.errors)} bad rows skipped)")


@main.group()
def manifests() -> None:
    """Add-in manifests and deployment files, built for PUBLIC_URL."""


@manifests.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--only", "names", multiple=True,
              help="only this add-in's files (repeatable; default: all registered)")
def manifests_export(directory: Path, names: tuple[str, ...]) -> None:
    """Write every add-in's manifests and deployment files into DIRECTORY."""
    from server.addins.exporters import EXPORTERS, export_all
    from server.config import load_config

    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise click.ClickException(f"unknown add-in {', '.join(unknown)}; choose from "
                                   f"{', '.join(sorted(EXPORTERS))}")
    # The files depend on the environment's configuration (PUBLIC_URL, OUTLOOK_*,
    # MS_CLIENT_ID); the Outlook manifests' version counter is kept in DATABASE_URL.
    config = load_config(Path("instance"))
    for path in export_all(config, directory, list(names) or None):
        click.echo(str(path))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="set up the demo data and exit")
def demo(host: str, port: int, no_serve: bool) -> None:
    """Create (or reuse) a demo org in instance/relay.sqlite3 and serve it with a worker."""
    from server.demo import run_demo

    run_demo(_app(), host=host, port=port, serve=not no_serve)


# Salesforce commands (issue 7) live with their package.
from server.salesforce.cli import group as _salesforce_group  # noqa: E402

main.add_command(_salesforce_group)
