"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const { OfficeMockObject } = require("office-addin-mock");

function setup({ headers, headersFail = false, token = "rly_tok", fetchImpl, getAsyncThrows = false }) {
  const associated = {};
  const completed = [];
  const fetched = [];
  global.Office = new OfficeMockObject({
    host: "outlook",
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    actions: { associate: (name, fn) => { associated[name] = fn; } },
    context: { mailbox: { item: { internetHeaders: {
      getAsync: (names, cb) => {
        if (getAsyncThrows) throw new Error("boom");
        cb(headersFail ? { status: "failed", error: { message: "no" } } : { status: "succeeded", value: headers });
      },
    } } } },
  });
  global.localStorage = { getItem: () => token };
  global.fetch = async (url, opts) => {
    fetched.push({ url, opts });
    return fetchImpl ? fetchImpl(url, opts) : { ok: true, status: 200 };
  };
  delete require.cache[require.resolve("../events.js")];
  const mod = require("../events.js");
  return { associated, completed, fetched, mod,
    event: { completed: (opts) => completed.push(opts) } };
}

function waitFor(predicate) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    (function poll() {
      if (predicate()) return resolve();
      if (Date.now() - start > 2000) return reject(new Error("timed out"));
      setTimeout(poll, 5);
    })();
  });
}

test("the handler is registered under the manifest's FunctionName", () => {
  const { associated } = setup({ headers: {} });
  assert.equal(typeof associated.onMessageSendHandler, "function");
});

test("a tagged message is reported as sending, then allowed", async () => {
  const s = setup({ headers: { "X-Relay-Task": "42" } });
  s.associated.onMessageSendHandler(s.event);
  await waitFor(() => s.completed.length > 0);
  assert.deepEqual(s.completed, [{ allowEvent: true }]);
  assert.equal(s.fetched.length, 1);
  assert.match(s.fetched[0].url, /\/api\/outlook\/tasks\/42\/sending$/);
  assert.equal(s.fetched[0].opts.headers.Authorization, "Bearer rly_tok");
});

test("an untagged message is allowed without a request", async () => {
  const s = setup({ headers: {} });
  s.associated.onMessageSendHandler(s.event);
  await waitFor(() => s.completed.length > 0);
  assert.deepEqual(s.completed, [{ allowEvent: true }]);
  assert.equal(s.fetched.length, 0);
});

test("errors never block the send: failed header read, network error, a throw", async () => {
  for (const opts of [
    { headers: {}, headersFail: true },
    { headers: { "x-relay-task": "7" }, fetchImpl: async () => { throw new TypeError("network down"); } },
    { headers: {}, getAsyncThrows: true },
    { headers: { "x-relay-task": "7" }, token: null },
  ]) {
    const s = setup(opts);
    s.associated.onMessageSendHandler(s.event);
    await waitFor(() => s.completed.length > 0);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(s.completed, [{ allowEvent: true }], JSON.stringify(opts));
  }
});

test("header values that are not task ids are ignored", () => {
  const { mod } = setup({ headers: {} });
  assert.equal(mod.relayTaggedTaskId({ "x-relay-task": "12" }), 12);
  assert.equal(mod.relayTaggedTaskId({ "x-relay-task": "12; drop" }), null);
  assert.equal(mod.relayTaggedTaskId({ other: "1" }), null);
});

// Classic Outlook on Windows runs the handler in a JavaScript-only runtime: OfficeRuntime.storage
// there is not the pane's, and there is no localStorage. What the pane wrote into the item's
// sessionData (Mailbox 1.11) when it filled the message is what the handler can read.
function windowsSetup({ headers, session, storage = {}, local = undefined }) {
  const associated = {};
  const completed = [];
  const fetched = [];
  const item = { internetHeaders: { getAsync: (names, cb) => cb({ status: "succeeded", value: headers }) } };
  if (session !== undefined) {
    item.sessionData = {
      getAsync: (name, cb) => (name in session
        ? cb({ status: "succeeded", value: session[name] })
        : cb({ status: "failed", error: { code: 9057, message: "key not found" } })),
    };
  }
  global.Office = new OfficeMockObject({
    host: "outlook",
    AsyncResultStatus: { Succeeded: "succeeded", Failed: "failed" },
    actions: { associate: (name, fn) => { associated[name] = fn; } },
    context: { mailbox: { item } },
  });
  global.OfficeRuntime = { storage: { getItem: async (key) => (key in storage ? storage[key] : null) } };
  if (local === undefined) delete global.localStorage; else global.localStorage = { getItem: () => local };
  global.fetch = async (url, opts) => { fetched.push({ url, opts }); return { ok: true, status: 200 }; };
  delete require.cache[require.resolve("../events.js")];
  require("../events.js");
  return { associated, completed, fetched, event: { completed: (opts) => completed.push(opts) } };
}

test("classic Windows: the token comes from the item's sessionData and the send is reported", async () => {
  const s = windowsSetup({ headers: { "x-relay-task": "42" },
    session: { "relay.send": JSON.stringify({ task: "42", token: "rly_session" }) } });
  try {
    s.associated.onMessageSendHandler(s.event);
    await waitFor(() => s.completed.length > 0);
    assert.deepEqual(s.completed, [{ allowEvent: true }]);
    assert.equal(s.fetched.length, 1);
    assert.match(s.fetched[0].url, /\/api\/outlook\/tasks\/42\/sending$/);
    assert.equal(s.fetched[0].opts.headers.Authorization, "Bearer rly_session");
  } finally {
    delete global.OfficeRuntime;
  }
});

test("no sessionData: OfficeRuntime.storage, then localStorage when storage has nothing", async () => {
  for (const [storage, local, expected] of [
    [{ "relay.outlook.token": "rly_runtime" }, "rly_local", "Bearer rly_runtime"],
    [{}, "rly_local", "Bearer rly_local"],
  ]) {
    const s = windowsSetup({ headers: { "x-relay-task": "42" }, session: {}, storage, local });
    try {
      s.associated.onMessageSendHandler(s.event);
      await waitFor(() => s.completed.length > 0);
      assert.equal(s.fetched.length, 1, expected);
      assert.equal(s.fetched[0].opts.headers.Authorization, expected);
    } finally {
      delete global.OfficeRuntime;
    }
  }
});

test("a token in sessionData and nothing tagged: allowed without a request", async () => {
  const s = windowsSetup({ headers: {}, session: { "relay.send": JSON.stringify({ token: "rly_session" }) } });
  try {
    s.associated.onMessageSendHandler(s.event);
    await waitFor(() => s.completed.length > 0);
    assert.deepEqual(s.completed, [{ allowEvent: true }]);
    assert.equal(s.fetched.length, 0);
  } finally {
    delete global.OfficeRuntime;
  }
});

test("a message tagged with an opaque tag is reported by its tag", async () => {
  const tag = "rt_Zm9vYmFyYmF6cXV4MTIzNDU2";
  const s = setup({ headers: { "x-relay-task": tag } });
  s.associated.onMessageSendHandler(s.event);
  await waitFor(() => s.completed.length > 0);
  assert.deepEqual(s.completed, [{ allowEvent: true }]);
  assert.equal(s.fetched.length, 1);
  assert.match(s.fetched[0].url, /\/api\/outlook\/sending$/);
  assert.deepEqual(JSON.parse(s.fetched[0].opts.body), { tag });
  assert.deepEqual(s.mod.relayTagged({ "X-Relay-Task": "rt_short" }), null);
});
