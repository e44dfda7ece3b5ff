"""``relay demo``: a demo org with reps, contacts, templates and three launched campaigns."""

from __future__ import annotations

import threading
from datetime import timedelta

import click
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import Org, Role, User
from server.accounts.service import create_token, create_user, get_or_create_org
from server.campaigns.launch import launch
from server.campaigns.service import StepInput, create_campaign
from server.campaigns.spec import SendOption, StepType
from server.compose.service import create_template
from server.contacts.models import Contact
from server.db import session_scope, utcnow

ORG = "Relay Demo Co"
PASSWORD = "relay-demo"
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances",
         "Dennis", "Radia", "Tim", "Katherine", "Linus", "Hedy", "Guido", "Sophie", "Niklaus",
         "Anita", "John", "Shafi", "Leslie", "Mary", "Vint", "Joan"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson",
        "Allen", "Ritchie", "Perlman", "Berners-Lee", "Johnson", "Torvalds", "Lamarr", "Rossum",
        "Wilson", "Wirth", "Borg", "McCarthy", "Goldwasser", "Lamport", "Keller", "Cerf", "Clarke"]
COMPANIES = ["Northwind Inc.", "Globex LLC", "Initech", "Umbrella Corp", "Stark Industries"]


def _seed(session: Session) -> dict[str, str]:
    """Create the demo org once; return the sign-in emails."""
    org = session.scalar(select(Org).where(Org.name == ORG))
    if org is not None:
        return {"admin": "admin@demo.relay", "rep": "ana@demo.relay", "rep2": "ben@demo.relay"}
    org = get_or_create_org(session, ORG)
    create_user(session, org=org, email="admin@demo.relay", name="Dana Admin", role=Role.ADMIN,
                title="Sales Ops", timezone="Europe/Paris", password=PASSWORD)
    ana = create_user(session, org=org, email="ana@demo.relay", name="Ana Rep", title="AE",
                      timezone="Europe/Paris", password=PASSWORD)
    ben = create_user(session, org=org, email="ben@demo.relay", name="Ben Rep", title="SDR",
                      timezone="America/New_York", password=PASSWORD)
    people: dict[int, list[int]] = {ana.id: [], ben.id: []}
    for i in range(25):
        owner = ana if i < 15 else ben
        c = Contact(org_id=org.id, owner_id=owner.id, first_name=FIRST[i], last_name=LAST[i],
                    email=f"{FIRST[i].lower()}.{LAST[i].lower()}@example.com",
                    title="VP Engineering" if i % 3 == 0 else "Head of Sales",
                    company=COMPANIES[i % len(COMPANIES)],
                    custom_fields={"industry": "software"} if i % 2 == 0 else {})
        session.add(c)
        session.flush()
        people[owner.id].append(c.id)
    intro = create_template(session, ana, name="Intro", subject="Quick question, {{first_name}}",
                            body_html="<p>Hi {{first_name | default: \"there\"}},</p><p>I help "
                            "teams like {{company_friendly}} ship faster.</p><p>{{my_name}}</p>")
    bump = create_template(session, ana, name="Bump", subject="",
                           body_html="<p>Just floating this to the top of your inbox.</p>")
    invite = create_template(session, ben, name="Event invite",
                             subject="Join us at Relay Live, {{first_name}}",
                             body_html="<p>{{! Mention the session they would like}}</p>")
    breakup = create_template(session, ana, name="Break-up", subject="Should I close your file?",
                              body_html="<p>Last note from me, {{first_name}}.</p>")
    E, CALL, INMAIL, CUSTOM = StepType.EMAIL, StepType.CALL, StepType.INMAIL, StepType.CUSTOM
    from datetime import time

    a = create_campaign(session, ana, name="Intro sequence", settings={
        "timezone": "Europe/Paris", "skip_weekends": True}, steps=[
        StepInput(day=1, type=E, send_option=SendOption.AT_TIME, send_time=time(9, 30),
                  template_id=intro.id),
        StepInput(day=3, type=E, send_option=SendOption.SAME_AS_PREVIOUS, follow_up=True,
                  template_id=bump.id),
        StepInput(day=5, type=CALL, title="Discovery call"),
        StepInput(day=7, type=E, send_option=SendOption.TASK, template_id=breakup.id),
        StepInput(day=8, type=INMAIL, title="Connect on LinkedIn"),
    ])
    c = create_campaign(session, ana, name="Call first", settings={
        "timezone": "Europe/Paris", "late_task_policy": "keep"}, steps=[
        StepInput(day=1, type=CALL, title="Intro call"),
        StepInput(day=1, type=E, send_option=SendOption.SAME_AS_PREVIOUS, template_id=intro.id),
        StepInput(day=3, type=E, send_option=SendOption.TASK, follow_up=True,
                  template_id=bump.id),
        StepInput(day=6, type=E, send_option=SendOption.AT_TIME, send_time=time(14, 0),
                  follow_up=True, template_id=breakup.id),
        StepInput(day=7, type=CUSTOM, title="Send a handwritten card"),
    ])
    b = create_campaign(session, ben, name="Event invite", settings={
        "timezone": "America/New_York"}, steps=[
        StepInput(day=1, type=E, send_option=SendOption.CHOOSE_AT_LAUNCH, template_id=intro.id),
        StepInput(day=2, type=E, send_option=SendOption.TASK, follow_up=True,
                  template_id=invite.id),
        StepInput(day=4, type=CUSTOM, title="Check registration list"),
    ])
    now = utcnow()
    launch(session, ana, a, people[ana.id][:8], now=now)
    launch(session, ana, c, people[ana.id][8:], now=now)
    launch(session, ben, b, people[ben.id], send_at=now + timedelta(hours=1), now=now)
    return {"admin": "admin@demo.relay", "rep": "ana@demo.relay", "rep2": "ben@demo.relay"}


def run_demo(app: Flask, *, host: str, port: int, serve: bool = True) -> None:
    """Migrate, seed, print how to get in, then serve with an in-process worker."""
    from server.migrations import upgrade
    from server.worker import run

    upgrade(app.config["DATABASE_URL"])
    with session_scope(app) as session:
        emails = _seed(session)
        rep = session.scalar(select(User).where(User.email == emails["rep"]))
        assert rep is not None
        token = create_token(session, rep, "demo")
    base = f"http://{host}:{port}"
    click.echo(f"""
Relay demo is ready ({app.config['DATABASE_URL']}).

  Web app      {base}/            sign in as {emails['rep']} / {PASSWORD}
                                    (also {emails['rep2']}, admin {emails['admin']})
  API          {base}/api/tasks?due=today
  OpenAPI      {base}/openapi.json
  Rep token    {token}

  curl -H 'Authorization: Bearer {token}' '{base}/api/tasks?due=all'
""")
    if not serve:
        return
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(app, stop), name="relay-worker", daemon=True)
    worker.start()
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        stop.set()
