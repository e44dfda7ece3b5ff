/*
 * Relay's Outlook event handlers (event-based activation). A plain script with no imports:
 * classic Outlook on Windows loads this file alone; the other clients load commands.html,
 * which includes it.
 *
 * OnMessageSend (SendMode PromptUser): when the message carries the x-relay-task header the
 * task pane stamped, tell Relay the task is being sent, with the token the pane left in the
 * item's sessionData (then OfficeRuntime.storage, then localStorage). The handler NEVER blocks the send:
 * every path, errors and timeouts included, ends in event.completed({ allowEvent: true }).
 */
/* global Office, OfficeRuntime */
var RELAY_BASE_URL = "__RELAY_PUBLIC_URL__";
var RELAY_TOKEN_KEY = "relay.outlook.token";
var RELAY_SEND_TIMEOUT_MS = 4000;

var RELAY_SESSION_KEY = "relay.send";

/*
 * What the pane stored in the item's sessionData (Mailbox 1.11) when it filled the message:
 * {task, token}, or null. Classic Outlook on Windows runs this handler in a JavaScript-only
 * runtime whose OfficeRuntime.storage is not the pane's and which has no localStorage, so the
 * item itself is the one place both sides share there.
 */
function relayReadSession(item) {
  return new Promise(function (resolve) {
    try {
      if (!item || !item.sessionData || typeof item.sessionData.getAsync !== "function") {
        resolve(null);
        return;
      }
      item.sessionData.getAsync(RELAY_SESSION_KEY, function (result) {
        try {
          var failed = result.status === (Office.AsyncResultStatus ? Office.AsyncResultStatus.Failed : "failed");
          var value = failed ? null : JSON.parse(result.value);
          resolve(value && typeof value === "object" ? value : null);
        } catch (e) {
          resolve(null);
        }
      });
    } catch (e) {
      resolve(null);
    }
  });
}

function relayStoredToken() {
  function fromLocalStorage() {
    try {
      return typeof localStorage !== "undefined" ? localStorage.getItem(RELAY_TOKEN_KEY) : null;
    } catch (e) {
      return null;
    }
  }
  try {
    if (typeof OfficeRuntime !== "undefined" && OfficeRuntime.storage) {
      return OfficeRuntime.storage.getItem(RELAY_TOKEN_KEY).then(function (token) {
        return token || fromLocalStorage();
      }, fromLocalStorage);
    }
  } catch (e) { /* fall through to localStorage */ }
  return Promise.resolve(fromLocalStorage());
}

/* The token to report with: the item's sessionData, then OfficeRuntime.storage, then localStorage. */
function relayReadToken(item) {
  return relayReadSession(item).then(function (session) {
    if (session && typeof session.token === "string" && session.token) return session.token;
    return relayStoredToken();
  });
}

/*
 * What the message's x-relay-task header names: {tag} (an opaque task tag, what the pane
 * stamps) or {id} (a plain task id, from messages tagged before tags existed); else null.
 */
function relayTagged(headers) {
  if (!headers) return null;
  var names = Object.keys(headers);
  for (var i = 0; i < names.length; i++) {
    if (names[i].toLowerCase() !== "x-relay-task") continue;
    var value = String(headers[names[i]]).trim();
    if (/^rt_[A-Za-z0-9_-]{24}$/.test(value)) return { tag: value };
    if (/^\d{1,15}$/.test(value)) return { id: parseInt(value, 10) };
  }
  return null;
}

function relayTaggedTaskId(headers) {
  var tagged = relayTagged(headers);
  return tagged && tagged.id !== undefined ? tagged.id : null;
}

function onMessageSendHandler(event) {
  var done = false;
  function allow() {
    if (done) return;
    done = true;
    event.completed({ allowEvent: true });
  }
  // Whatever happens below, the message goes out within the timeout.
  var timer = setTimeout(allow, RELAY_SEND_TIMEOUT_MS);
  function finish() {
    clearTimeout(timer);
    allow();
  }
  try {
    var item = Office.context.mailbox.item;
    if (!item || !item.internetHeaders || typeof item.internetHeaders.getAsync !== "function") {
      finish();
      return;
    }
    item.internetHeaders.getAsync(["x-relay-task"], function (result) {
      try {
        var failed = result.status === (Office.AsyncResultStatus ? Office.AsyncResultStatus.Failed : "failed");
        var tagged = failed ? null : relayTagged(result.value);
        if (tagged === null) {
          finish();
          return;
        }
        relayReadToken(item).then(function (token) {
          if (!token) return null;
          var byTag = tagged.tag !== undefined;
          return fetch(RELAY_BASE_URL + (byTag ? "/api/outlook/sending"
            : "/api/outlook/tasks/" + tagged.id + "/sending"), {
            method: "POST",
            headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
            body: byTag ? JSON.stringify({ tag: tagged.tag }) : "{}",
          });
        }).then(finish, finish);
      } catch (e) {
        finish();
      }
    });
  } catch (e) {
    finish();
  }
}

if (typeof Office !== "undefined" && Office.actions && typeof Office.actions.associate === "function") {
  Office.actions.associate("onMessageSendHandler", onMessageSendHandler);
}

if (typeof module === "object" && module.exports) {
  module.exports = { onMessageSendHandler: onMessageSendHandler, relayTaggedTaskId: relayTaggedTaskId,
    relayTagged: relayTagged,
    relayReadToken: relayReadToken };
}
