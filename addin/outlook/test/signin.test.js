"use strict";
// The sign-in dialog, nested app authentication and the pinned pane's refresh, against
// office-addin-mock objects shaped like Outlook's.
const test = require("node:test");
const assert = require("node:assert/strict");
const { OfficeMockObject } = require("office-addin-mock");
const P = require("../pane.js");

function dialogOffice(answer) {
  const calls = [];
  const office = new OfficeMockObject({
    host: "outlook",
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    EventType: { DialogMessageReceived: "dialogMessageReceived", DialogEventReceived: "dialogEventReceived",
      ItemChanged: "olkItemSelectedChanged" },
    context: { ui: { displayDialogAsync: (url, options, cb) => { calls.push({ url, options }); cb(answer()); } } },
  });
  return { office, calls };
}

test("the sign-in dialog leaves promptBeforeOpen at its default", async () => {
  const handlers = {};
  const dialog = { addEventHandler: (type, fn) => { handlers[type] = fn; }, close: () => {} };
  const { office, calls } = dialogOffice(() => ({ status: "succeeded", value: dialog }));
  const pending = P.openSignInDialog(office, "https://relay.example.com/addin/outlook/sign-in");
  handlers.dialogMessageReceived({ message: JSON.stringify({ type: "relay-token", token: "rly_t" }) });
  assert.equal(await pending, "rly_t");
  assert.equal(calls.length, 1);
  assert.ok(!("promptBeforeOpen" in calls[0].options), JSON.stringify(calls[0].options));
});

test("a refused (12009) or blocked (12011) dialog tells the rep what to do", async () => {
  for (const [code, pattern] of [[12009, /allow the window/], [12011, /Allow pop-ups/]]) {
    const { office } = dialogOffice(() => ({ status: "failed", error: { code, message: "x" } }));
    await assert.rejects(P.openSignInDialog(office, "https://relay.example.com/s"), pattern);
  }
});

class InteractionRequiredAuthError extends Error {
  constructor() { super("interaction_required"); this.name = "InteractionRequiredAuthError"; }
}

function pca(silentError) {
  const calls = [];
  return {
    calls,
    acquireTokenSilent: async () => { calls.push("silent"); if (silentError) throw silentError; return { accessToken: "ms_silent" }; },
    acquireTokenPopup: async () => { calls.push("popup"); return { accessToken: "ms_popup" }; },
  };
}

test("nested app auth: the popup only after InteractionRequiredAuthError and from a click", async () => {
  const ok = pca(null);
  assert.equal(await P.naaToken(ok, { scopes: ["s"] }, false), "ms_silent");
  assert.deepEqual(ok.calls, ["silent"]);
  const atStart = pca(new InteractionRequiredAuthError());
  assert.equal(await P.naaToken(atStart, { scopes: ["s"] }, false), null);
  assert.deepEqual(atStart.calls, ["silent"]); // no popup without a click
  const onClick = pca(new InteractionRequiredAuthError());
  assert.equal(await P.naaToken(onClick, { scopes: ["s"] }, true), "ms_popup");
  assert.deepEqual(onClick.calls, ["silent", "popup"]);
  const other = pca(new Error("network down"));
  assert.equal(await P.naaToken(other, { scopes: ["s"] }, true), null);
  assert.deepEqual(other.calls, ["silent"]); // any other error: no popup
});

test("a pinned pane registers for ItemChanged and refreshes on it", async () => {
  const registered = [];
  const office = new OfficeMockObject({
    host: "outlook",
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    EventType: { ItemChanged: "olkItemSelectedChanged" },
    context: { mailbox: { addHandlerAsync: (type, fn, cb) => { registered.push({ type, fn }); cb({ status: "succeeded" }); } } },
  });
  let refreshed = 0;
  assert.equal(await P.watchItemChanges(office, () => { refreshed += 1; }), true);
  assert.equal(registered.length, 1);
  assert.equal(registered[0].type, "olkItemSelectedChanged");
  registered[0].fn({ type: "olkItemSelectedChanged" });
  assert.equal(refreshed, 1);
});
