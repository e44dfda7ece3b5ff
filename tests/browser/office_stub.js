// A stand-in for Office.js (https://appsforoffice.microsoft.com/lib/1/hosted/office.js) in
// browser tests: the same API surface the pane uses, recording every call in
// window.__officeCalls. window.__officeConfig (set before the page loads) chooses the mode
// ("compose", "read" or "none"), the supported requirement sets and the body type.
(function () {
  "use strict";
  const cfg = Object.assign({ mode: "compose", sets: { Mailbox: "1.13", DialogApi: "1.2" },
    bodyType: "html", dialogToken: null }, window.__officeConfig || {});
  const calls = (window.__officeCalls = []);
  const clone = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));
  const answer = (name, value) => function () {
    const args = Array.prototype.slice.call(arguments);
    const cb = typeof args[args.length - 1] === "function" ? args.pop() : null;
    calls.push({ name: name, args: clone(args) });
    if (cb) setTimeout(() => cb({ status: "succeeded", value: value }), 5);
  };
  const version = (v) => v.split(".").map(Number);
  function isSetSupported(name, min) {
    if (!cfg.sets[name]) return false;
    const [a, b] = version(cfg.sets[name]);
    const [c, d] = version(min || "1.1");
    return a > c || (a === c && b >= d);
  }
  let item = null;
  if (cfg.mode === "compose") {
    item = {
      itemType: "message",
      to: { setAsync: answer("to.setAsync") },
      cc: { setAsync: answer("cc.setAsync") },
      bcc: { setAsync: answer("bcc.setAsync") },
      subject: { setAsync: answer("subject.setAsync") },
      body: { getTypeAsync: answer("body.getTypeAsync", cfg.bodyType), setAsync: answer("body.setAsync") },
      internetHeaders: { setAsync: answer("internetHeaders.setAsync") },
    };
  } else if (cfg.mode === "read") {
    item = { itemType: "message", subject: "Quarterly numbers", to: [] };
  }
  window.Office = {
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    CoercionType: { Html: "html", Text: "text" },
    EventType: { DialogMessageReceived: "dialogMessageReceived", DialogEventReceived: "dialogEventReceived" },
    actions: { associate: answer("actions.associate") },
    context: {
      requirements: { isSetSupported: isSetSupported },
      mailbox: { item: item, displayNewMessageForm: answer("displayNewMessageForm") },
      ui: {
        displayDialogAsync: function (url, options, cb) {
          calls.push({ name: "displayDialogAsync", args: [url, clone(options)] });
          const handlers = {};
          const dialog = {
            addEventHandler: (type, fn) => { handlers[type] = fn; },
            close: () => calls.push({ name: "dialog.close", args: [] }),
          };
          setTimeout(() => cb({ status: "succeeded", value: dialog }), 5);
          setTimeout(() => handlers.dialogMessageReceived({
            message: JSON.stringify({ type: "relay-token", token: cfg.dialogToken }) }), 30);
        },
      },
    },
    onReady: function (cb) {
      const info = { host: "Outlook", platform: "OfficeOnline" };
      return new Promise((resolve) => setTimeout(() => { if (cb) cb(info); resolve(info); }, 0));
    },
  };
})();
