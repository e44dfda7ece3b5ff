"""The Outlook add-in's manifests, rendered from configuration (pure functions, no I/O).

One :class:`AddinSource` (built from the app configuration) renders both the XML add-in only
manifest (``manifests/outlook.xml.j2``) and the unified Microsoft 365 app manifest
(``manifests/outlook.json.j2``). Their version's last part is a stored counter that goes up
whenever :func:`content_hash` (what was rendered, and the icons) changes, so any change of
configuration, template or icon gives the admin center a higher version to pick up
(:mod:`server.addins.versions`).

:func:`check_config` says what about the configuration Outlook will refuse; :func:`check_xml`
makes the checks the XML schema cannot (https URLs, resource ids, lengths, icon sizes, the
event runtime and its handlers).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import uuid
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

ROOT = Path(__file__).resolve().parent.parent.parent
TEMPLATES = ROOT / "manifests"
ADDIN_DIR = ROOT / "addin" / "outlook"
ASSETS = ADDIN_DIR / "assets"

#: The path the add-in's files are served under (``server.addins.outlook.views``).
ADDIN_PATH = "/addin/outlook"
#: The ``Office.actions.associate`` name of the OnMessageSend handler.
SEND_HANDLER = "onMessageSendHandler"
#: Icon files in the app package (the unified manifest names them relative to it).
PACKAGE_ICONS = ("icon-192.png", "outline-32.png")

_NS = {
    "o": "http://schemas.microsoft.com/office/appforoffice/1.1",
    "bt": "http://schemas.microsoft.com/office/officeappbasictypes/1.0",
    "v10": "http://schemas.microsoft.com/office/mailappversionoverrides",
    "v11": "http://schemas.microsoft.com/office/mailappversionoverrides/1.1",
}
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_VERSION_PLACEHOLDER = "0.0.0"


@dataclass(frozen=True)
class AddinSource:
    """Everything both manifests are made of."""

    public_url: str
    addin_id: str
    version: str
    display_name: str
    provider: str
    support_url: str
    ms_client_id: str | None = None
    description: str = ("Open your Relay email tasks in Outlook: fill a message with the "
                        "task's recipient, subject and template, and track it as sent.")
    short_description: str = "Relay email tasks in Outlook"
    compose_label: str = "Relay tasks"
    compose_tip: str = "Pick one of your Relay email tasks and fill this message with it."
    read_label: str = "Relay tasks"
    read_tip: str = "See your Relay email tasks and open one in a new message."
    event_min_mailbox: str = "1.12"
    json_manifest_version: str = "1.24"
    send_handler: str = SEND_HANDLER
    button_icon_sizes: tuple[int, ...] = (16, 32, 80)

    @property
    def base(self) -> str:
        """PUBLIC_URL without a trailing slash."""
        return self.public_url.rstrip("/")

    @property
    def origin(self) -> str:
        """Scheme, host and port of PUBLIC_URL."""
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def host(self) -> str:
        """The host name (and port) of PUBLIC_URL."""
        return urlsplit(self.public_url).netloc

    @property
    def taskpane_url(self) -> str:
        """The task pane page."""
        return f"{self.base}{ADDIN_PATH}/taskpane.html"

    @property
    def commands_url(self) -> str:
        """The function file / event runtime page (loads events.js)."""
        return f"{self.base}{ADDIN_PATH}/commands.html"

    @property
    def events_script_url(self) -> str:
        """The event handlers as a plain script (classic Outlook on Windows loads only this)."""
        return f"{self.base}{ADDIN_PATH}/events.js"

    @property
    def app_id_uri(self) -> str:
        """The Entra application ID URI of Relay's API (for WebApplicationInfo)."""
        return f"api://{self.host}/{self.ms_client_id}"

    def icon_url(self, size: int) -> str:
        """The URL of the square icon of ``size`` pixels."""
        return f"{self.base}{ADDIN_PATH}/assets/icon-{size}.png"


def default_addin_id(public_url: str) -> str:
    """A stable add-in id for a deployment that did not set OUTLOOK_ADDIN_ID (from its URL)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, public_url.rstrip("/") + ADDIN_PATH))


def source_from_config(config: Mapping[str, Any]) -> AddinSource:
    """The add-in's source from the app configuration (see the README's table)."""
    public_url = str(config["PUBLIC_URL"]).rstrip("/")
    return AddinSource(
        public_url=public_url,
        addin_id=config.get("OUTLOOK_ADDIN_ID") or default_addin_id(public_url),
        version=str(config.get("OUTLOOK_ADDIN_VERSION") or "1.0"),
        display_name=str(config.get("OUTLOOK_DISPLAY_NAME") or "Relay"),
        provider=str(config.get("OUTLOOK_PROVIDER") or "Relay"),
        support_url=str(config.get("OUTLOOK_SUPPORT_URL") or f"{public_url}/"),
        ms_client_id=config.get("MS_CLIENT_ID") or None,
    )


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",),
                                            default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _render(name: str, source: AddinSource, version: str) -> str:
    return _env().get_template(name).render(s=source, version=version)


def icon_bytes() -> dict[str, bytes]:
    """Every icon file of the add-in, by file name."""
    return {p.name: p.read_bytes() for p in sorted(ASSETS.glob("*.png"))}


def content_hash(source: AddinSource, icons: Mapping[str, bytes]) -> str:
    """A hash of everything the manifests carry but their version.

    Both manifests rendered with a placeholder version, and the icons: any change of
    configuration, template or icon changes it, and so bumps the stored counter
    (:mod:`server.addins.versions`).
    """
    digest = hashlib.sha256()
    for name in ("outlook.xml.j2", "outlook.json.j2"):
        digest.update(_render(name, source, _VERSION_PLACEHOLDER).encode())
    for name in sorted(icons):
        digest.update(name.encode() + b"\0" + icons[name])
    return digest.hexdigest()


def manifest_version(source: AddinSource, build: int) -> str:
    """``MAJOR.MINOR.BUILD``: ``OUTLOOK_ADDIN_VERSION`` and the stored counter ``build``."""
    major_minor = ".".join((source.version.split(".") + ["0"])[:2])
    return f"{major_minor}.{int(build)}"


@dataclass(frozen=True)
class Rendered:
    """The rendered manifests and their shared version."""

    version: str
    xml: bytes
    json: bytes


def render(source: AddinSource, icons: Mapping[str, bytes] | None = None, *,
           build: int) -> Rendered:
    """Render both manifests with version ``MAJOR.MINOR.build`` (``build``: the counter)."""
    version = manifest_version(source, build)
    xml = _render("outlook.xml.j2", source, version).encode()
    doc = json.loads(_render("outlook.json.j2", source, version))
    return Rendered(version=version, xml=xml,
                    json=(json.dumps(doc, indent=2) + "\n").encode())


def app_package(rendered: Rendered, icons: Mapping[str, bytes]) -> bytes:
    """The app package zip for the admin center: manifest.json and the icons it names."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        # A fixed timestamp: the same manifest gives the same bytes.
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)

        add("manifest.json", rendered.json)
        for name in PACKAGE_ICONS:
            add(name, icons[name])
    return buf.getvalue()


def files(rendered: Rendered, icons: Mapping[str, bytes]) -> dict[str, bytes]:
    """The Outlook deployment files of rendered manifests, by file name."""
    return {"outlook.xml": rendered.xml, "outlook.json": rendered.json,
            "outlook-app.zip": app_package(rendered, icons)}


# -- checks --------------------------------------------------------------------------------


def check_config(config: Mapping[str, Any]) -> list[str]:
    """What Outlook or the admin center will refuse about this configuration (empty: fine)."""
    problems: list[str] = []
    public_url = str(config.get("PUBLIC_URL") or "")
    parts = urlsplit(public_url)
    if parts.scheme != "https":
        problems.append(f"PUBLIC_URL is not https ({public_url}): Outlook will refuse this "
                        "manifest; serve Relay over https and set PUBLIC_URL to that address")
    if parts.hostname in {"localhost", "127.0.0.1", "::1"}:
        problems.append(f"PUBLIC_URL points at this machine ({parts.hostname}): Outlook "
                        "clients elsewhere cannot reach it")
    addin_id = config.get("OUTLOOK_ADDIN_ID")
    if addin_id:
        try:
            uuid.UUID(str(addin_id))
        except ValueError:
            problems.append(f"OUTLOOK_ADDIN_ID is not a GUID ({addin_id})")
    if not re.fullmatch(r"\d{1,5}(\.\d{1,5})?", str(config.get("OUTLOOK_ADDIN_VERSION") or "1.0")):
        problems.append("OUTLOOK_ADDIN_VERSION must be MAJOR or MAJOR.MINOR (numbers), "
                        "e.g. 1.0; the third part is a counter raised on every manifest change")
    for name, limit in (("OUTLOOK_DISPLAY_NAME", 30), ("OUTLOOK_PROVIDER", 32)):
        value = str(config.get(name) or "")
        if len(value) > limit:
            problems.append(f"{name} is {len(value)} characters; the unified manifest allows "
                            f"at most {limit}")
    support = str(config.get("OUTLOOK_SUPPORT_URL") or "")
    if support and not support.startswith("https://"):
        problems.append(f"OUTLOOK_SUPPORT_URL is not https ({support})")
    client_id = config.get("MS_CLIENT_ID")
    if client_id:
        try:
            uuid.UUID(str(client_id))
        except ValueError:
            problems.append(f"MS_CLIENT_ID is not a GUID ({client_id}): copy the Application "
                            "(client) ID of the Entra app registration")
    return problems


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG file, or None when ``data`` is not one."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def associated_functions(script: str) -> set[str]:
    """The names a script registers with ``Office.actions.associate("name", fn)``."""
    return set(re.findall(r"Office\.actions\.associate\(\s*[\"']([^\"']+)[\"']", script))


#: Longest text of each kind of string resource and setting (the add-in manifest's limits).
_SHORT, _LONG = 125, 250


def check_xml(xml: bytes, *, production: bool,
              fetch: Callable[[str], bytes | None], event_script: str) -> list[str]:
    """The checks the XML schema cannot make; an empty list means the manifest passes.

    ``fetch(url)`` returns the bytes served at one of the manifest's URLs (None: missing);
    ``event_script`` is the text of the event handlers' script.
    """
    from lxml import etree

    problems: list[str] = []
    root = etree.fromstring(xml)

    urls = [el.get("DefaultValue") for el in root.iter()
            if el.get("DefaultValue", "").startswith(("http://", "https://"))]
    urls += [(el.text or "").strip() for el in root.iter(f"{{{_NS['o']}}}AppDomain")]
    if production:
        problems += [f"URL is not https: {u}"
                     for u in dict.fromkeys(urls) if not u.startswith("https://")]

    for vo_ns in ("v10", "v11"):
        for vo in root.iter(f"{{{_NS[vo_ns]}}}VersionOverrides"):
            problems += _check_resources(vo, vo_ns, fetch)

    for key in ("DisplayName", "ProviderName"):
        for el in root.iter(f"{{{_NS['o']}}}{key}"):
            value = el.get("DefaultValue") if el.get("DefaultValue") is not None else el.text
            if value is not None and len(value) > _SHORT:
                problems.append(f"{key} is longer than {_SHORT} characters")
    for el in root.iter(f"{{{_NS['o']}}}Description"):
        if len(el.get("DefaultValue", "")) > _LONG:
            problems.append(f"Description is longer than {_LONG} characters")
    for key, size in (("IconUrl", 64), ("HighResolutionIconUrl", 128)):
        for el in root.iter(f"{{{_NS['o']}}}{key}"):
            problems += _check_icon(key, el.get("DefaultValue", ""), size, fetch)

    for vo in root.iter(f"{{{_NS['v11']}}}VersionOverrides"):
        problems += _check_events(vo, event_script)
    return problems


def _check_resources(vo: Any, ns: str, fetch: Callable[[str], bytes | None]) -> list[str]:
    """Every resid of one VersionOverrides block names a resource of the right kind."""
    problems: list[str] = []
    q = _NS[ns]
    bt = _NS["bt"]
    # The nested 1.1 block has its own resources; do not look into it from the 1.0 block.
    own = [el for el in vo.iter() if _owner(el) is vo]
    kinds = {"Images": "Image", "Urls": "Url", "ShortStrings": "String", "LongStrings": "String"}
    defined: dict[str, dict[str, str]] = {k: {} for k in kinds}
    for res in (el for el in own if el.tag == f"{{{q}}}Resources"):
        for group, item in kinds.items():
            for el in res.iter(f"{{{bt}}}{group}"):
                for entry in el.iter(f"{{{bt}}}{item}"):
                    rid = entry.get("id", "")
                    if len(rid) > 32:
                        problems.append(f"resource id {rid!r} is longer than 32 characters")
                    if rid in defined[group]:
                        problems.append(f"resource id {rid!r} is defined twice")
                    defined[group][rid] = entry.get("DefaultValue", "")
    for group, limit in (("ShortStrings", _SHORT), ("LongStrings", _LONG)):
        for rid, value in defined[group].items():
            if len(value) > limit:
                problems.append(f"{group} {rid!r} is longer than {limit} characters")
    for rid, value in defined["Images"].items():
        size = re.search(r"icon-(\d+)\.png$", value)
        problems += _check_icon(f"image {rid!r}", value, int(size.group(1)) if size else None,
                                fetch)

    def need(group: str, rid: str | None, where: str) -> None:
        if not rid:
            problems.append(f"{where} has no resid")
        elif len(rid) > 32:
            problems.append(f"resid {rid!r} of {where} is longer than 32 characters")
        elif rid not in defined[group]:
            problems.append(f"resid {rid!r} of {where} is not a defined {group} resource")

    for el in own:
        tag = etree_localname(el)
        parent = etree_localname(el.getparent()) if el.getparent() is not None else ""
        rid = el.get("resid")
        if tag == "Image" and el.tag == f"{{{bt}}}Image" and parent == "Icon":
            need("Images", rid, "a button icon")
            declared = el.get("size")
            if rid in defined["Images"] and declared:
                problems += _check_icon(f"icon {rid!r}", defined["Images"][rid],
                                        int(declared), fetch)
        elif tag in {"SourceLocation", "FunctionFile", "Runtime"} or (
                tag == "Override" and parent == "Runtime"):
            need("Urls", rid, tag)
        elif tag in {"Label", "Title"}:
            need("ShortStrings", rid, tag)
        elif tag == "Description" and parent == "Supertip":
            need("LongStrings", rid, "Supertip Description")
    return problems


def etree_localname(el: Any) -> str:
    """An element's tag without its namespace."""
    tag = el.tag if isinstance(el.tag, str) else ""
    return tag.rsplit("}", 1)[-1]


def _owner(el: Any) -> Any:
    """The nearest VersionOverrides ancestor of ``el`` (itself excluded) in any namespace."""
    node = el.getparent()
    while node is not None:
        if etree_localname(node) == "VersionOverrides":
            return node
        node = node.getparent()
    return None


def _check_icon(what: str, url: str, size: int | None,
                fetch: Callable[[str], bytes | None]) -> list[str]:
    data = fetch(url)
    if data is None:
        return [f"{what}: nothing is served at {url}"]
    actual = png_size(data)
    if actual is None:
        return [f"{what}: {url} is not a PNG file"]
    if size is not None and actual != (size, size):
        return [f"{what}: {url} is {actual[0]}x{actual[1]} pixels, declared {size}x{size}"]
    return []


def _check_events(vo: Any, event_script: str) -> list[str]:
    """LaunchEvent SourceLocation = the Runtime's resid; every handler is associated."""
    problems: list[str] = []
    q = _NS["v11"]
    runtimes = {el.get("resid") for el in vo.iter(f"{{{q}}}Runtime")}
    associated = associated_functions(event_script)
    for point in vo.iter(f"{{{q}}}ExtensionPoint"):
        if point.get(_XSI_TYPE) != "LaunchEvent":
            continue
        source = point.find(f"{{{q}}}SourceLocation")
        rid = source.get("resid") if source is not None else None
        if rid not in runtimes:
            problems.append(f"LaunchEvent SourceLocation {rid!r} is not a Runtime resid "
                            f"({sorted(r for r in runtimes if r)})")
        for event in point.iter(f"{{{q}}}LaunchEvent"):
            name = event.get("FunctionName", "")
            if name not in associated:
                problems.append(f"LaunchEvent {event.get('Type')} handler {name!r} is not "
                                "registered with Office.actions.associate in the event script")
            if event.get("Type") == "OnMessageSend" and event.get("SendMode") != "PromptUser":
                problems.append("OnMessageSend must use SendMode PromptUser (never block a "
                                "send)")
    for point in vo.iter(f"{{{q}}}ExtensionPoint"):
        for fn in point.iter(f"{{{q}}}FunctionName"):
            if (fn.text or "") not in associated:
                problems.append(f"ExecuteFunction {fn.text!r} is not registered with "
                                "Office.actions.associate")
    return problems


def local_fetch(source: AddinSource) -> Callable[[str], bytes | None]:
    """A ``fetch`` for :func:`check_xml` that reads the add-in's own files from disk.

    A URL under the add-in's path maps to its file in ``addin/outlook``; anything else (and a
    file that does not exist) is None.
    """
    prefix = f"{source.base}{ADDIN_PATH}/"

    def fetch(url: str) -> bytes | None:
        if not url.startswith(prefix):
            return None
        path = (ADDIN_DIR / url[len(prefix):]).resolve()
        if ADDIN_DIR.resolve() not in path.parents or not path.is_file():
            return None
        return path.read_bytes()

    return fetch


def validation_problems(config: Mapping[str, Any]) -> list[str]:
    """Everything wrong with the running configuration's manifest: config and extra checks."""
    source = source_from_config(config)
    rendered = render(source, build=0)  # no check looks at the version's counter
    event_script = (ADDIN_DIR / "events.js").read_text(encoding="utf-8")
    problems = check_config(config)
    extra = check_xml(rendered.xml, production=True, fetch=local_fetch(source),
                      event_script=event_script)
    if not source.public_url.startswith("https://"):
        # One line about PUBLIC_URL says it; not one per URL built from it.
        extra = [p for p in extra if not p.startswith("URL is not https")]
    return problems + extra
