"""Google's types for what the add-on sends: cards, response envelopes, the deployment file.

Cards are checked against ``google.apps.card_v1.types.Card`` (``google-apps-card``) and the
deployment file against ``google.cloud.gsuiteaddons_v1.types.Deployment``
(``google-cloud-gsuiteaddons``), both with ``json_format.ParseDict`` and no
``ignore_unknown_fields``: an unknown or misspelt field fails.

No public proto describes the response envelope of an HTTP add-on, so one is built here
with ``descriptor_pb2`` on top of card_v1's file descriptor, following the field names of
Google's reference pages (RenderActions, Action, Navigation, HostAppAction,
GmailClientActionMarkup, UpdateDraftActionMarkup, OpenCreatedDraftActionMarkup) and the
granular-consent answer (``requesting_google_scopes``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from google.apps.card_v1.types import Card
from google.cloud.gsuiteaddons_v1.types import Deployment
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

#: Fields of the deployment file that are newer than google-cloud-gsuiteaddons' protos;
#: only these are removed before the strict parse (path, field).
NEWER_DEPLOYMENT_FIELDS = (
    (("addOns", "httpOptions"), "granularOauthPermissionSupport"),
)

CARD = "google.apps.card.v1.Card"
_F = descriptor_pb2.FieldDescriptorProto


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int,
           type_name: str = "", repeated: bool = False, json_name: str = "") -> None:
    f = msg.field.add(name=name, number=number, type=kind,
                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    if json_name:
        f.json_name = json_name


def _message(file: descriptor_pb2.FileDescriptorProto, name: str,
             *fields: tuple[Any, ...]) -> None:
    msg = file.message_type.add(name=name)
    for spec in fields:
        _field(msg, *spec)


def _enum(file: descriptor_pb2.FileDescriptorProto, name: str, values: list[str]) -> None:
    enum = file.enum_type.add(name=name)
    for number, value in enumerate(values):
        enum.value.add(name=value, number=number)


def _copy_file(pool: descriptor_pool.DescriptorPool, fd: Any) -> None:
    """Add ``fd`` and its dependencies to ``pool`` (dependencies first)."""
    for dep in fd.dependencies:
        try:
            pool.FindFileByName(dep.name)
        except KeyError:
            _copy_file(pool, dep)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    pool.Add(proto)


@functools.cache
def envelope_class() -> Any:
    """The message class of a whole add-on response, built once."""
    pool = descriptor_pool.DescriptorPool()
    card_file = Card.pb().DESCRIPTOR.file
    _copy_file(pool, card_file)
    f = descriptor_pb2.FileDescriptorProto(name="relay_test/addon_response.proto",
                                           package="relay.test", syntax="proto3")
    f.dependency.append(card_file.name)
    M, S, B, E = _F.TYPE_MESSAGE, _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_ENUM
    t = ".relay.test."
    _enum(f, "UpdateBodyType", ["UNSPECIFIED_ACTION_TYPE", "IN_PLACE_INSERT",
                                "INSERT_AT_START", "INSERT_AT_END", "REPLACE"])
    _enum(f, "ContentType", ["UNSPECIFIED_CONTENT_TYPE", "TEXT", "MUTABLE_HTML",
                             "IMMUTABLE_HTML"])
    _message(f, "AddOnResponse",
             ("action", 1, M, t + "Action"),
             ("render_actions", 2, M, t + "RenderActions", False, "renderActions"),
             ("requesting_google_scopes", 3, M, t + "RequestingGoogleScopes", False,
              "requesting_google_scopes"))
    _message(f, "RequestingGoogleScopes", ("scopes", 1, S, "", True),
             ("all_scopes", 2, B, "", False, "all_scopes"))
    _message(f, "RenderActions",
             ("action", 1, M, t + "Action"),
             ("host_app_action", 2, M, t + "HostAppAction", False, "hostAppAction"))
    _message(f, "Action",
             ("navigations", 1, M, t + "Navigation", True),
             ("notification", 2, M, t + "Notification"),
             ("link", 3, M, t + "OpenLink"))
    _message(f, "Notification", ("text", 1, S))
    _message(f, "OpenLink", ("url", 1, S))
    _message(f, "Navigation",
             ("push_card", 1, M, "." + CARD, False, "pushCard"),
             ("update_card", 2, M, "." + CARD, False, "updateCard"),
             ("pop_to_card", 3, S, "", False, "popToCard"),
             ("pop", 4, B),
             ("pop_to_root", 5, B, "", False, "popToRoot"))
    _message(f, "HostAppAction",
             ("gmail_action", 1, M, t + "GmailClientActionMarkup", False, "gmailAction"))
    _message(f, "GmailClientActionMarkup",
             ("update_draft_action_markup", 1, M, t + "UpdateDraftActionMarkup", False,
              "updateDraftActionMarkup"),
             ("open_created_draft_action_markup", 2, M, t + "OpenCreatedDraftActionMarkup",
              False, "openCreatedDraftActionMarkup"))
    _message(f, "UpdateDraftActionMarkup",
             ("update_body", 1, M, t + "UpdateBody", False, "updateBody"),
             ("update_subject", 2, M, t + "UpdateSubject", False, "updateSubject"),
             ("update_to_recipients", 3, M, t + "UpdateToRecipients", False,
              "updateToRecipients"),
             ("update_cc_recipients", 4, M, t + "UpdateCcRecipients", False,
              "updateCcRecipients"),
             ("update_bcc_recipients", 5, M, t + "UpdateBccRecipients", False,
              "updateBccRecipients"))
    _message(f, "UpdateBody",
             ("insert_contents", 1, M, t + "InsertContent", True, "insertContents"),
             ("type", 2, E, t + "UpdateBodyType"))
    _message(f, "InsertContent", ("content", 1, S),
             ("content_type", 2, E, t + "ContentType", False, "contentType"))
    _message(f, "UpdateSubject", ("subject", 1, S))
    _message(f, "Recipient", ("email", 1, S))
    _message(f, "UpdateToRecipients",
             ("to_recipients", 1, M, t + "Recipient", True, "toRecipients"))
    _message(f, "UpdateCcRecipients",
             ("cc_recipients", 1, M, t + "Recipient", True, "ccRecipients"))
    _message(f, "UpdateBccRecipients",
             ("bcc_recipients", 1, M, t + "Recipient", True, "bccRecipients"))
    _message(f, "OpenCreatedDraftActionMarkup",
             ("draft_id", 1, S, "", False, "draftId"),
             ("draft_thread_id", 2, S, "", False, "draftThreadId"),
             ("draft_storage_id", 3, S, "", False, "draftStorageId"),
             ("draft_thread_server_perm_id", 4, S, "", False, "draftThreadServerPermId"))
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "relay.test.AddOnResponse"))


def cards_in(body: Any) -> list[dict[str, Any]]:
    """Every card pushed or updated by a response."""
    found: list[dict[str, Any]] = []
    for holder in (body.get("action"), (body.get("renderActions") or {}).get("action")):
        for nav in (holder or {}).get("navigations", []):
            for key in ("pushCard", "updateCard"):
                if key in nav:
                    found.append(nav[key])
    return found


def widget_count(card: dict[str, Any]) -> int:
    """How many widgets a card has."""
    return sum(len(s.get("widgets", [])) for s in card.get("sections", []))


def check_card(card: dict[str, Any]) -> None:
    """Strict parse into card_v1's Card; at most 100 widgets."""
    json_format.ParseDict(card, Card.pb()())
    assert widget_count(card) <= 100


def check_response(body: Any) -> Any:
    """Strict parse of a whole response and of each of its cards; returns the message."""
    assert isinstance(body, dict) and body, body
    for card in cards_in(body):
        check_card(card)
    return json_format.ParseDict(body, envelope_class()())


def check_deployment(doc: dict[str, Any]) -> Any:
    """Strict parse into gsuiteaddons' Deployment, less only the known newer fields."""
    doc = copy.deepcopy(doc)
    for path, name in NEWER_DEPLOYMENT_FIELDS:
        holder = doc
        for key in path:
            holder = holder[key]
        assert name in holder, f"{name} expected in {'.'.join(path)}"
        del holder[name]
    return json_format.ParseDict(doc, Deployment.pb()())
