"""The Outlook manifests: schema-valid, the checks the schema cannot make, served and exported."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask.testing import FlaskClient
from lxml import etree

from server.addins import manifests
from server.cli import main
from tests.addins.outlook.support import ADDIN, APP_MANIFEST_SCHEMAS, node_modules, xsd_path

PROD = {
    "PUBLIC_URL": "https://relay.example.com",
    "OUTLOOK_ADDIN_ID": "0b7e2a3c-8d1f-4e55-9a3b-6c2d1e0f9a87",
    "OUTLOOK_ADDIN_VERSION": "2.3",
    "OUTLOOK_DISPLAY_NAME": "Relay",
    "OUTLOOK_PROVIDER": "Example Corp",
    "OUTLOOK_SUPPORT_URL": "https://relay.example.com/help",
    "MS_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
}
NS = {"o": "http://schemas.microsoft.com/office/appforoffice/1.1",
      "bt": "http://schemas.microsoft.com/office/officeappbasictypes/1.0",
      "v10": "http://schemas.microsoft.com/office/mailappversionoverrides",
      "v11": "http://schemas.microsoft.com/office/mailappversionoverrides/1.1",
      "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
EVENTS_JS = (ADDIN / "events.js").read_text()


@pytest.fixture(scope="module")
def xsd() -> etree.XMLSchema:
    """The shared Outlook add-in manifest schema (imports its siblings from disk)."""
    return etree.XMLSchema(etree.parse(str(xsd_path())))


def render(build: int = 65536, **overrides: Any) -> manifests.Rendered:
    return manifests.render(manifests.source_from_config({**PROD, **overrides}), build=build)


def local(source_config: dict[str, Any] | None = None) -> Any:
    return manifests.local_fetch(manifests.source_from_config(source_config or PROD))


def schema_errors(xsd: etree.XMLSchema, xml: bytes) -> list[str]:
    ok = xsd.validate(etree.fromstring(xml))
    return [] if ok else [f"{e.line}: {e.message}" for e in xsd.error_log]


@pytest.mark.parametrize("config", [PROD, {**PROD, "MS_CLIENT_ID": None},
                                    {"PUBLIC_URL": "https://r.example.org/relay/"}])
def test_rendered_xml_is_valid_against_the_schema(xsd: etree.XMLSchema, config: dict[str, Any]):
    """Does the XML manifest validate against OfficeAppManifestV1_1.xsd (with or without SSO)?"""
    rendered = manifests.render(manifests.source_from_config(config), build=65536)
    assert schema_errors(xsd, rendered.xml) == []


def test_the_schema_catches_a_broken_manifest(xsd: etree.XMLSchema):
    """Would the schema notice a pinning element in VersionOverrides 1.0 or a bad version?"""
    xml = render().xml.decode()
    pinned = xml.replace('<SourceLocation resid="Taskpane.Url"/>',
                         '<SourceLocation resid="Taskpane.Url"/><SupportsPinning>true'
                         '</SupportsPinning>', 1)
    assert schema_errors(xsd, pinned.encode())
    assert schema_errors(xsd, re.sub(r"<Version>[^<]+", "<Version>1.x", xml).encode())


def test_the_xml_manifest_has_what_the_issue_asks_for():
    """Compose and read buttons to the pane, ReadWriteItem, pinning, OnMessageSend PromptUser."""
    root = etree.fromstring(render().xml)
    assert root.get(f"{{{NS['xsi']}}}type") == "MailApp"
    assert root.findtext("o:Id", namespaces=NS) == PROD["OUTLOOK_ADDIN_ID"]
    assert root.findtext("o:ProviderName", namespaces=NS) == "Example Corp"
    assert root.find("o:SupportUrl", NS).get("DefaultValue") == "https://relay.example.com/help"
    assert root.findtext("o:Permissions", namespaces=NS) == "ReadWriteItem"
    v11 = root.find("v10:VersionOverrides/v11:VersionOverrides", NS)
    assert v11 is not None
    points = {p.get(f"{{{NS['xsi']}}}type"): p for p in v11.iter(f"{{{NS['v11']}}}ExtensionPoint")}
    assert set(points) == {"MessageComposeCommandSurface", "MessageReadCommandSurface",
                           "LaunchEvent"}
    for surface in ("MessageComposeCommandSurface", "MessageReadCommandSurface"):
        action = points[surface].find(".//v11:Action", NS)
        assert action.get(f"{{{NS['xsi']}}}type") == "ShowTaskpane"
        assert action.findtext("v11:SupportsPinning", namespaces=NS) == "true"
        assert action.find("v11:SourceLocation", NS).get("resid") == "Taskpane.Url"
    strings = {s.get("id"): s.get("DefaultValue") for s in v11.iter(f"{{{NS['bt']}}}String")}
    label = points["MessageComposeCommandSurface"].find(".//v11:Control/v11:Label", NS)
    assert strings[label.get("resid")] == "Relay tasks"
    event = points["LaunchEvent"].find(".//v11:LaunchEvent", NS)
    assert (event.get("Type"), event.get("SendMode"), event.get("FunctionName")) == (
        "OnMessageSend", "PromptUser", "onMessageSendHandler")
    urls = {u.get("id"): u.get("DefaultValue") for u in v11.iter(f"{{{NS['bt']}}}Url")}
    assert urls["Taskpane.Url"] == "https://relay.example.com/addin/outlook/taskpane.html"
    assert urls["JSRuntime.Url"] == "https://relay.example.com/addin/outlook/events.js"


def test_the_extra_checks_pass_for_a_production_configuration():
    """Are URLs https, resids defined and short, lengths, icon sizes, runtime and handlers?"""
    rendered = render()
    assert manifests.check_xml(rendered.xml, production=True, fetch=local(),
                               event_script=EVENTS_JS) == []
    assert manifests.check_config(PROD) == []


def test_each_extra_check_catches_what_it_is_for():
    """Does every check report a manifest broken in its way (so a pass means something)?"""
    xml = render().xml.decode()

    def problems(text: str, script: str = EVENTS_JS, fetch: Any = None) -> list[str]:
        return manifests.check_xml(text.encode(), production=True, fetch=fetch or local(),
                                   event_script=script)

    http = xml.replace("https://relay.example.com/addin/outlook/taskpane.html",
                       "http://relay.example.com/addin/outlook/taskpane.html")
    assert ("URL is not https: http://relay.example.com/addin/outlook/taskpane.html"
            in problems(http))

    undefined = xml.replace('<Label resid="Read.Label"/>', '<Label resid="Nope.Label"/>')
    assert any("'Nope.Label'" in p and "not a defined ShortStrings" in p
               for p in problems(undefined))
    long_id = "X" * 33
    too_long = xml.replace('"Compose.Tip"', f'"{long_id}"')
    assert any("longer than 32 characters" in p for p in problems(too_long))
    wrong_kind = xml.replace('<SourceLocation resid="Taskpane.Url"/>',
                             '<SourceLocation resid="Compose.Label"/>', 1)
    assert any("not a defined Urls" in p for p in problems(wrong_kind))

    long_label = xml.replace('DefaultValue="Relay tasks"', f'DefaultValue="{"r" * 126}"', 1)
    assert any("longer than 125" in p for p in problems(long_label))
    long_tip = xml.replace('DefaultValue="Pick one', f'DefaultValue="{"p" * 251}', 1)
    assert any("longer than 250" in p for p in problems(long_tip))

    icons = manifests.icon_bytes()

    def wrong_icon(url: str) -> bytes | None:
        if url.endswith("icon-32.png"):
            return icons["icon-16.png"]
        return local()(url)

    assert any("is 16x16 pixels, declared 32x32" in p for p in problems(xml, fetch=wrong_icon))
    assert any("nothing is served" in p
               for p in problems(xml, fetch=lambda u: None if "80" in u else local()(u)))

    runtime = xml.replace('<SourceLocation resid="Runtime.Url"/>',
                          '<SourceLocation resid="Commands.Url"/>')
    assert any("is not a Runtime resid" in p for p in problems(runtime))
    unregistered = EVENTS_JS.replace('associate("onMessageSendHandler"', 'associate("other"')
    assert any("'onMessageSendHandler' is not registered" in p
               for p in problems(xml, script=unregistered))
    blocking = xml.replace('SendMode="PromptUser"', 'SendMode="Block"')
    assert any("PromptUser" in p for p in problems(blocking))


def test_icons_are_real_pngs_at_their_declared_sizes():
    """Is every committed icon a PNG whose pixel size is the one its name declares?"""
    for name, data in manifests.icon_bytes().items():
        size = int(re.search(r"(\d+)\.png$", name).group(1))
        assert manifests.png_size(data) == (size, size), name


def test_the_configuration_check_names_what_outlook_refuses():
    """Is a development PUBLIC_URL (http, 127.0.0.1) or a bad id reported in words?"""
    problems = manifests.check_config({"PUBLIC_URL": "http://127.0.0.1:5000",
                                       "OUTLOOK_ADDIN_ID": "not-a-guid",
                                       "OUTLOOK_DISPLAY_NAME": "R" * 31,
                                       "MS_CLIENT_ID": "abc"})
    text = "\n".join(problems)
    assert "PUBLIC_URL is not https (http://127.0.0.1:5000): Outlook will refuse" in text
    assert "points at this machine" in text
    assert "OUTLOOK_ADDIN_ID is not a GUID" in text
    assert "OUTLOOK_DISPLAY_NAME is 31 characters" in text
    assert "MS_CLIENT_ID is not a GUID" in text


def test_the_content_hash_changes_with_the_rendered_manifest():
    """Does any change of what is rendered (URL, name, icons) change the content hash?"""
    def digest(icons: dict[str, bytes] | None = None, **overrides: Any) -> str:
        return manifests.content_hash(manifests.source_from_config({**PROD, **overrides}),
                                      manifests.icon_bytes() if icons is None else icons)

    base = digest()
    assert digest() == base  # deterministic
    others = {digest(PUBLIC_URL="https://relay2.example.com"),
              digest(OUTLOOK_DISPLAY_NAME="Relay CRM"), digest(MS_CLIENT_ID=None),
              digest({**manifests.icon_bytes(), "icon-16.png": b"changed"})}
    assert base not in others and len(others) == 4
    rendered = render(build=65540)
    assert rendered.version == "2.3.65540"
    root = etree.fromstring(rendered.xml)
    assert root.findtext("o:Version", namespaces=NS) == rendered.version
    assert json.loads(rendered.json)["version"] == rendered.version


def test_the_stored_counter_only_goes_up(session: Any):
    """Is the counter kept while the content is the same, and one more on each change?"""
    from datetime import UTC, datetime

    from server.addins.versions import FIRST_BUILD, next_build

    at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert next_build(session, "outlook", "a" * 64, at) == FIRST_BUILD == 65536
    assert next_build(session, "outlook", "a" * 64, at) == 65536
    assert next_build(session, "outlook", "b" * 64, at) == 65537
    assert next_build(session, "outlook", "a" * 64, at) == 65538  # back to old content: still up
    session.commit()
    assert next_build(session, "other", "a" * 64, at) == 65536  # one counter per add-in


def test_the_served_version_goes_up_with_every_change(database_url: str):
    """Served manifests: a change of configuration raises the version, a change back too.

    The last part used to be a hash (1.0.33849 then 1.0.32601); it is the stored counter now.
    """
    from server.app import create_app
    from server.db import dispose

    versions = []
    for name in ("Relay", "Relay CRM", "Relay"):
        app = create_app({"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "k",
                          **PROD, "OUTLOOK_DISPLAY_NAME": name})
        try:
            for _ in range(2):  # the same content twice: the same version
                root = etree.fromstring(app.test_client().get("/manifests/outlook.xml").data)
                versions.append(root.findtext("o:Version", namespaces=NS))
            doc = json.loads(app.test_client().get("/manifests/outlook.json").data)
            assert doc["version"] == versions[-1]
        finally:
            dispose(app)
    assert versions == ["2.3.65536"] * 2 + ["2.3.65537"] * 2 + ["2.3.65538"] * 2


def test_the_json_manifest_is_valid_against_the_app_manifest_package_schema():
    """Does the unified manifest validate against @microsoft/app-manifest's bundled schema?"""
    node_modules()
    doc = json.loads(render().json)
    schema_file = APP_MANIFEST_SCHEMAS / f"v{doc['manifestVersion']}" / "MicrosoftTeams.schema.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8-sig"))
    validator = jsonschema.Draft4Validator(schema)
    assert [e.message for e in validator.iter_errors(doc)] == []
    # The same validator refuses a manifest broken in ways the admin center would refuse.
    broken = json.loads(render().json)
    broken["extensions"][0]["autoRunEvents"][0]["events"][0]["options"]["sendMode"] = "never"
    broken["name"]["short"] = "x" * 31
    assert len(list(validator.iter_errors(broken))) == 2


def test_the_json_manifest_matches_the_xml_one():
    """Same id, version, URLs, buttons, pinning and send event in both manifests?"""
    rendered = render()
    doc = json.loads(rendered.json)
    assert doc["id"] == PROD["OUTLOOK_ADDIN_ID"]
    ext = doc["extensions"][0]
    pane, read_pane, events = ext["runtimes"]
    for runtime in (pane, read_pane):
        assert runtime["code"]["page"] == "https://relay.example.com/addin/outlook/taskpane.html"
        assert runtime["actions"][0]["pinnable"] is True
    assert events["code"]["script"] == "https://relay.example.com/addin/outlook/events.js"
    assert ext["autoRunEvents"][0]["events"][0] == {
        "type": "messageSending", "actionId": "onMessageSendHandler",
        "options": {"sendMode": "promptUser"}}
    assert [r["contexts"] for r in ext["ribbons"]] == [["mailCompose"], ["mailRead"]]
    labels = [r["tabs"][0]["groups"][0]["controls"][0]["label"] for r in ext["ribbons"]]
    assert labels == ["Relay tasks", "Relay tasks"]
    assert doc["webApplicationInfo"]["id"] == PROD["MS_CLIENT_ID"]


def test_manifests_are_served_without_signing_in(app: Any, client: FlaskClient):
    """Can the admin center fetch the XML, the JSON and the app package anonymously?"""
    app.config.update(PROD)
    xml = client.get("/manifests/outlook.xml")
    assert xml.status_code == 200 and xml.mimetype == "application/xml"
    assert b"https://relay.example.com/addin/outlook/taskpane.html" in xml.data
    js = client.get("/manifests/outlook.json")
    assert js.status_code == 200 and js.json["id"] == PROD["OUTLOOK_ADDIN_ID"]
    pkg = client.get("/manifests/outlook-app.zip")
    assert pkg.status_code == 200
    with zipfile.ZipFile(io.BytesIO(pkg.data)) as zf:
        assert sorted(zf.namelist()) == ["icon-192.png", "manifest.json", "outline-32.png"]
        assert json.loads(zf.read("manifest.json")) == js.json
        assert manifests.png_size(zf.read("icon-192.png")) == (192, 192)
        assert manifests.png_size(zf.read("outline-32.png")) == (32, 32)


def test_the_hosted_files_are_served_and_nothing_else_of_addin(client: FlaskClient):
    """Are the pane's files served, and package.json, tests and node_modules not?"""
    for path in ("taskpane.html", "taskpane.js", "pane.js", "taskpane.css", "commands.html",
                 "events.js", "assets/icon-80.png", "vendor/msal-browser.min.js"):
        with client.get(f"/addin/outlook/{path}") as resp:
            assert resp.status_code == 200, path
    for path in ("package.json", "package-lock.json", "test/pane.test.js",
                 "node_modules/office-addin-mock/package.json", "../../server/config.py"):
        with client.get(f"/addin/outlook/{path}") as resp:
            assert resp.status_code == 404, path
    events = client.get("/addin/outlook/events.js").get_data(as_text=True)
    assert 'var RELAY_BASE_URL = "http://127.0.0.1:5000"' in events


def test_relay_manifests_export_writes_every_file(runner: Any, tmp_path: Path,
                                                 database_url: str):
    """Does `relay manifests export DIR` write the XML, the JSON and the package for PUBLIC_URL?"""
    out = tmp_path / "out"
    result = runner.invoke(main, ["manifests", "export", str(out)],
                           env={"PUBLIC_URL": "https://relay.example.com",
                                "DATABASE_URL": database_url},
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["gmail-deployment.json", "outlook-app.zip",
                                                    "outlook.json", "outlook.xml"]
    xml = (out / "outlook.xml").read_bytes()
    assert b"https://relay.example.com/addin/outlook/events.js" in xml
    assert b"<Version>1.0.65536</Version>" in xml  # the stored counter, from the database
    bad = runner.invoke(main, ["manifests", "export", str(out), "--only", "lotus"])
    assert bad.exit_code != 0 and "unknown add-in lotus" in bad.output


def test_no_item_context_is_only_on_a_read_action_with_a_mailbox_1_13_runtime():
    """Is supportsNoItemContext declared only by the read button's action, in a 1.13 runtime?"""
    doc = json.loads(render().json)
    [ext] = doc["extensions"]
    runtime_of = {a["id"]: r for r in ext["runtimes"] for a in r["actions"]}
    actions = {a["id"]: a for r in ext["runtimes"] for a in r["actions"]}
    used = {ctx: [c["actionId"] for t in rb["tabs"] for g in t["groups"] for c in g["controls"]]
            for rb in ext["ribbons"] for ctx in rb["contexts"]}
    no_item = [aid for aid, a in actions.items() if a.get("supportsNoItemContext")]
    assert no_item, "the pinned pane can open with no item selected"
    for aid in no_item:
        assert aid in used["mailRead"] and aid not in used["mailCompose"]
        [cap] = runtime_of[aid]["requirements"]["capabilities"]
        assert cap["name"] == "Mailbox"
        assert tuple(int(p) for p in cap["minVersion"].split(".")) >= (1, 13)
    assert not any(actions[aid].get("supportsNoItemContext") for aid in used["mailCompose"])
