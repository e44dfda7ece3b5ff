"use strict";
// An Outlook mock built with Microsoft's office-addin-mock: the calls the pane makes are
// recorded in order, and each Office callback API answers like Outlook does.
const { OfficeMockObject } = require("office-addin-mock");

function outlookMock({ mode = "compose", sets = { Mailbox: "1.13" }, bodyType = "html", failOn = null } = {}) {
  const calls = [];
  const answer = (name, value) => (...args) => {
    const cb = args[args.length - 1];
    calls.push({ name, args: args.slice(0, -1) });
    if (failOn === name) {
      cb({ status: "failed", error: { message: name + " was refused" } });
    } else {
      cb({ status: "succeeded", value });
    }
  };
  const supported = (name, version) => {
    const have = sets[name];
    if (!have) return false;
    const [a1, b1] = have.split(".").map(Number);
    const [a2, b2] = (version || "1.1").split(".").map(Number);
    return a1 > a2 || (a1 === a2 && b1 >= b2);
  };
  let item = null;
  if (mode === "compose") {
    item = {
      itemType: "message",
      to: { setAsync: answer("to.setAsync") },
      cc: { setAsync: answer("cc.setAsync") },
      bcc: { setAsync: answer("bcc.setAsync") },
      subject: { setAsync: answer("subject.setAsync") },
      body: { getTypeAsync: answer("body.getTypeAsync", bodyType), setAsync: answer("body.setAsync") },
      internetHeaders: { setAsync: answer("internetHeaders.setAsync"),
        getAsync: answer("internetHeaders.getAsync", {}) },
      sessionData: { setAsync: answer("sessionData.setAsync") },
    };
  } else if (mode === "read") {
    item = { itemType: "message", subject: "Re: hello", body: { getAsync: answer("body.getAsync", "") } };
  }
  const data = {
    host: "outlook",
    context: {
      requirements: { isSetSupported: (name, version) => supported(name, version) },
      mailbox: {
        displayNewMessageForm: (params) => calls.push({ name: "displayNewMessageForm", args: [params] }),
      },
    },
    CoercionType: { Html: "html", Text: "text" },
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
  };
  if (item) data.context.mailbox.item = item;
  const office = new OfficeMockObject(data);
  return { office, calls };
}

function prefill(overrides = {}) {
  return Object.assign({
    task: { id: 7 },
    to: [{ email: "grace@example.com", name: "Grace Hopper" }],
    cc: [], bcc: [],
    subject: "Hello Grace",
    html: "<p>Hi Grace,</p><p>Best,<br>Rep</p>",
    text: "Hi Grace,\n\nBest,\nRep",
    prompts: [], blocked: null,
  }, overrides);
}

module.exports = { outlookMock, prefill };
