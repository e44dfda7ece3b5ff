"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const P = require("../pane.js");
const { outlookMock, prefill } = require("./helpers.js");

const TAG = "rt_Zm9vYmFyYmF6cXV4MTIzNDU2";

test("the mode comes from the item: compose, read, or none", () => {
  assert.equal(P.itemMode(outlookMock({ mode: "compose" }).office), "compose");
  assert.equal(P.itemMode(outlookMock({ mode: "read" }).office), "read");
  assert.equal(P.itemMode(outlookMock({ mode: "none" }).office), "none");
});

test("capabilities are asked with isSetSupported", () => {
  const old = P.capabilities(outlookMock({ sets: { Mailbox: "1.7" } }).office);
  assert.equal(old.internetHeaders, false);
  assert.equal(old.newMessageForm, true);
  const recent = P.capabilities(outlookMock({ sets: { Mailbox: "1.8", DialogApi: "1.2" } }).office);
  assert.equal(recent.internetHeaders, true);
  assert.equal(recent.dialog, true);
  assert.equal(recent.nestedAppAuth, false);
});

test("fill sets To, Subject, reads the body type, sets the HTML body and the header, in that order", async () => {
  const { office, calls } = outlookMock({ sets: { Mailbox: "1.8" } });
  const done = await P.fillMessage(office, 7, prefill(), "rly_tok", TAG);
  assert.deepEqual(calls.map((c) => c.name), [
    "to.setAsync", "subject.setAsync", "body.getTypeAsync", "body.setAsync", "internetHeaders.setAsync",
  ]);
  assert.deepEqual(calls[0].args[0], [{ displayName: "Grace Hopper", emailAddress: "grace@example.com" }]);
  assert.equal(calls[1].args[0], "Hello Grace");
  assert.equal(calls[3].args[0], "<p>Hi Grace,</p><p>Best,<br>Rep</p>");
  assert.deepEqual(calls[3].args[1], { coercionType: "html" });
  assert.deepEqual(calls[4].args[0], { "x-relay-task": TAG }); // the opaque tag, not the id 7
  assert.deepEqual(done, { bodyType: "html", tagged: true });
});

test("a plain-text compose window gets the text body; Cc and Bcc are set when present", async () => {
  const { office, calls } = outlookMock({ bodyType: "text", sets: { Mailbox: "1.8" } });
  await P.fillMessage(office, 9, prefill({ cc: [{ email: "cc@example.com", name: "" }],
    bcc: [{ email: "bcc@example.com", name: "B" }] }));
  assert.deepEqual(calls.map((c) => c.name).slice(0, 3), ["to.setAsync", "cc.setAsync", "bcc.setAsync"]);
  assert.deepEqual(calls[1].args[0], [{ displayName: "cc@example.com", emailAddress: "cc@example.com" }]);
  const body = calls.find((c) => c.name === "body.setAsync");
  assert.equal(body.args[0], "Hi Grace,\n\nBest,\nRep");
  assert.deepEqual(body.args[1], { coercionType: "text" });
});

test("with Mailbox 1.11 the fill leaves the task and token in the item's sessionData for the send handler", async () => {
  const { office, calls } = outlookMock({ sets: { Mailbox: "1.11" } });
  const done = await P.fillMessage(office, 7, prefill(), "rly_tok", TAG);
  assert.deepEqual(calls.map((c) => c.name).slice(-2), ["internetHeaders.setAsync", "sessionData.setAsync"]);
  const session = calls[calls.length - 1];
  assert.equal(session.args[0], "relay.send");
  assert.deepEqual(JSON.parse(session.args[1]), { task: "7", token: "rly_tok" });
  assert.equal(done.tagged, true);
  // Mailbox 1.8 to 1.10: tagged, no sessionData call.
  const older = outlookMock({ sets: { Mailbox: "1.10" } });
  await P.fillMessage(older.office, 7, prefill(), "rly_tok", TAG);
  assert.ok(!older.calls.some((c) => c.name === "sessionData.setAsync"));
});

test("a refused sessionData write does not undo the fill", async () => {
  const { office } = outlookMock({ sets: { Mailbox: "1.11" }, failOn: "sessionData.setAsync" });
  const done = await P.fillMessage(office, 7, prefill(), "rly_tok", TAG);
  assert.equal(done.tagged, true);
});

test("without a tag from Relay the message is filled but not tagged (never with the task id)", async () => {
  const { office, calls } = outlookMock({ sets: { Mailbox: "1.11" } });
  const done = await P.fillMessage(office, 7, prefill(), "rly_tok", null);
  assert.equal(done.tagged, false);
  assert.ok(!calls.some((c) => c.name === "internetHeaders.setAsync" || c.name === "sessionData.setAsync"));
});

test("without Mailbox 1.8 the message is filled but not tagged", async () => {
  const { office, calls } = outlookMock({ sets: { Mailbox: "1.7" } });
  const done = await P.fillMessage(office, 7, prefill(), "rly_tok", TAG);
  assert.equal(done.tagged, false);
  assert.ok(!calls.some((c) => c.name === "internetHeaders.setAsync"));
});

test("a refused call stops the sequence and names the step", async () => {
  const { office, calls } = outlookMock({ failOn: "subject.setAsync" });
  await assert.rejects(P.fillMessage(office, 7, prefill()), /Outlook could not set the subject: subject.setAsync was refused/);
  assert.deepEqual(calls.map((c) => c.name), ["to.setAsync", "subject.setAsync"]);
});

test("a blocked task fills nothing and says which fields are missing", async () => {
  const { office, calls } = outlookMock();
  const blocked = prefill({ blocked: { fields: ["company"] } });
  assert.match(P.blockedReason(blocked), /company has no value/);
  await assert.rejects(P.fillMessage(office, 7, blocked), /company/);
  assert.deepEqual(calls, []);
  const r = P.openInNewMessage(outlookMock({ mode: "read" }).office, blocked);
  assert.equal(r.opened, false);
});

test("a contact without an email address is blocked too", () => {
  assert.match(P.blockedReason(prefill({ to: [] })), /no email address/);
});

test("open in new message passes recipients, subject and HTML body to displayNewMessageForm", () => {
  const { office, calls } = outlookMock({ mode: "read" });
  const r = P.openInNewMessage(office, prefill({ cc: [{ email: "cc@example.com", name: "C" }] }));
  assert.deepEqual(r, { opened: true });
  assert.equal(calls.length, 1);
  assert.equal(calls[0].name, "displayNewMessageForm");
  assert.deepEqual(calls[0].args[0], {
    toRecipients: [{ displayName: "Grace Hopper", emailAddress: "grace@example.com" }],
    subject: "Hello Grace",
    htmlBody: "<p>Hi Grace,</p><p>Best,<br>Rep</p>",
    ccRecipients: [{ displayName: "C", emailAddress: "cc@example.com" }],
  });
});

test("the 32 KB, 100 recipient and 255 character limits send the rep to fill a new message instead", () => {
  const exactly = prefill({ html: "x".repeat(32 * 1024) });
  assert.equal(P.newMessageFit(exactly).ok, true);
  const big = prefill({ html: "é".repeat(16 * 1024 + 1) }); // 2 bytes each in UTF-8
  assert.deepEqual(P.newMessageFit(big).reasons, ["the body is 33 KB (at most 32 KB)"]);
  const many = prefill({ to: Array.from({ length: 101 }, (_, i) => ({ email: `p${i}@example.com`, name: "" })) });
  assert.deepEqual(P.newMessageFit(many).reasons, ["101 recipients (at most 100)"]);
  const long = prefill({ subject: "s".repeat(256) });
  assert.equal(P.newMessageFit(long).ok, false);
  assert.equal(P.newMessageFit(prefill({ subject: "s".repeat(255) })).ok, true);

  const { office, calls } = outlookMock({ mode: "none" });
  const r = P.openInNewMessage(office, big);
  assert.equal(r.opened, false);
  assert.match(r.message, /Start a new message/);
  assert.deepEqual(calls, []);
});

test("search matches every word in contact, company, campaign or title", () => {
  const tasks = [
    { id: 1, title: "Email Grace", contact: { name: "Grace Hopper", email: "g@x.com", company: "Initech" }, campaign: { name: "Spring" } },
    { id: 2, title: "Email Alan", contact: { name: "Alan Turing", email: "a@y.com", company: "Acme" }, campaign: { name: "Spring" } },
  ];
  assert.deepEqual(P.filterTasks(tasks, "spring initech").map((t) => t.id), [1]);
  assert.deepEqual(P.filterTasks(tasks, "  ").map((t) => t.id), [1, 2]);
  assert.deepEqual(P.filterTasks(tasks, "zzz"), []);
});

test("the API client sends the bearer token and turns errors into messages", async () => {
  const seen = [];
  const fetchFn = async (url, opts) => {
    seen.push({ url, opts });
    if (url.endsWith("/opened")) return { ok: false, status: 404, json: async () => ({ error: "not_found", message: "no such task" }) };
    return { ok: true, status: 200, json: async () => ({ items: [] }) };
  };
  const api = P.makeApi(fetchFn, "https://relay.test", () => "rly_abc");
  await api.tasks("today");
  assert.equal(seen[0].url, "https://relay.test/api/tasks?type=email&status=open&per_page=200&due=today");
  assert.equal(seen[0].opts.headers.Authorization, "Bearer rly_abc");
  await assert.rejects(api.opened(5), (e) => e.status === 404 && e.message === "no such task");
  assert.equal(seen[1].opts.body, JSON.stringify({ via: "outlook" }));
});
