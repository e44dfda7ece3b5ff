/*
 * Relay's Outlook task pane: the page. The logic is in pane.js (window.RelayPane); this file
 * only connects it to the DOM, Office.js and Relay's API. Errors are shown in the pane's
 * message bar, never with alert().
 */
/* global Office, OfficeRuntime, RelayPane, msal */
(function () {
  "use strict";
  const P = RelayPane;
  const base = window.location.origin;
  const state = { token: null, tasks: [], selected: null, prefill: null, config: {}, mode: "none",
    caps: {}, microsoftToken: null };
  const $ = (id) => document.getElementById(id);

  function setStatus(text, kind) {
    const bar = $("status");
    bar.textContent = text || "";
    bar.className = "message-bar" + (kind ? " " + kind : "");
    bar.hidden = !text;
  }

  function storeToken(token) {
    state.token = token;
    try {
      if (token) localStorage.setItem(P.TOKEN_KEY, token); else localStorage.removeItem(P.TOKEN_KEY);
    } catch (e) { /* storage may be blocked; the token then lasts for this pane only */ }
    try {
      // The event runtime of classic Outlook on Windows reads OfficeRuntime.storage.
      if (typeof OfficeRuntime !== "undefined" && OfficeRuntime.storage) {
        (token ? OfficeRuntime.storage.setItem(P.TOKEN_KEY, token)
          : OfficeRuntime.storage.removeItem(P.TOKEN_KEY)).catch(() => {});
      }
    } catch (e) { /* not available in this client */ }
  }

  const api = P.makeApi((url, opts) => window.fetch(url, opts), base, () => state.token);

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error("could not load " + src));
      document.head.appendChild(s);
    });
  }

  /**
   * Nested app authentication (MSAL.js), only when Relay has an Entra app (MS_CLIENT_ID).
   * MSAL's popup only after InteractionRequiredAuthError and only from a click (interactive).
   */
  async function microsoftToken(interactive) {
    if (!state.config.ms_client_id || !state.caps.nestedAppAuth) return null;
    if (typeof msal === "undefined") await loadScript(state.config.msal_script);
    if (!state.pca) {
      state.pca = await msal.createNestablePublicClientApplication({
        auth: { clientId: state.config.ms_client_id, authority: "https://login.microsoftonline.com/common" },
      });
    }
    return P.naaToken(state.pca, { scopes: [state.config.ms_scope] }, interactive);
  }

  /** Relay's own sign-in page in an Office dialog; it hands back a scoped add-in token. */
  function dialogSignIn() {
    return P.openSignInDialog(Office, base + "/addin/outlook/sign-in");
  }

  async function whoAmI() {
    try {
      return await api.me();
    } catch (e) {
      if (e.status === 401) return null;
      throw e;
    }
  }

  async function authenticate() {
    try {
      state.token = localStorage.getItem(P.TOKEN_KEY);
    } catch (e) { state.token = null; }
    if (state.token) {
      const me = await whoAmI();
      if (me) return me;
      storeToken(null);
    }
    try {
      state.microsoftToken = await microsoftToken(false);  // silent only: no click yet
    } catch (e) {
      state.microsoftToken = null;
    }
    if (state.microsoftToken) {
      state.token = state.microsoftToken;
      const me = await whoAmI();
      if (me) return me;
      state.token = null;
    }
    return null;
  }

  async function signIn() {
    setStatus("");
    try {
      if (!state.microsoftToken) {
        // From the rep's click: MSAL may show its popup if interaction is required.
        state.microsoftToken = await microsoftToken(true).catch(() => null);
        if (state.microsoftToken) {
          state.token = state.microsoftToken;
          const me = await whoAmI();
          if (me) {
            await showTasks(me);
            return;
          }
          state.token = null;
        }
      }
      const token = await dialogSignIn();
      storeToken(token);
      if (state.microsoftToken) {
        // Link this Microsoft account so the next sign-in is silent.
        await api.link(state.microsoftToken).catch((e) =>
          setStatus("Signed in, but your Microsoft account was not linked: " + e.message, "warning"));
      }
      await showTasks(await api.me());
    } catch (e) {
      setStatus(e.message, "error");
    }
  }

  function dueText(task) {
    const due = new Date(task.due_local || task.due_at);
    return due.toLocaleString(undefined, { weekday: "short", day: "numeric", month: "short",
      hour: "2-digit", minute: "2-digit" });
  }

  function renderList() {
    const list = $("task-list");
    list.textContent = "";
    const shown = P.filterTasks(state.tasks, $("search").value);
    $("empty").hidden = shown.length > 0;
    for (const task of shown) {
      const li = document.createElement("li");
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "task";
      btn.dataset.taskId = String(task.id);
      btn.setAttribute("aria-pressed", String(state.selected === task.id));
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = task.contact.name + (task.contact.company ? " · " + task.contact.company : "");
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = task.campaign.name + " · day " + task.day + " · due " + dueText(task);
      if (new Date(task.due_at) < new Date()) meta.classList.add("overdue");
      btn.append(name, meta);
      btn.addEventListener("click", () => select(task.id));
      li.appendChild(btn);
      list.appendChild(li);
    }
  }

  async function loadTasks() {
    const page = await api.tasks($("due").value);
    state.tasks = page.items;
    renderList();
  }

  async function showTasks(me) {
    $("signed-out").hidden = true;
    $("tasks-view").hidden = false;
    $("who").textContent = me.name;
    await loadTasks();
  }

  async function select(taskId) {
    state.selected = taskId;
    state.prefill = null;
    renderList();
    setStatus("");
    const prefill = await api.prefill(taskId);
    if (state.selected !== taskId) return;
    state.prefill = prefill;
    $("preview").hidden = false;
    $("preview-to").textContent = prefill.to.map((r) => r.name ? r.name + " <" + r.email + ">" : r.email).join(", ");
    $("preview-subject").textContent = prefill.subject;
    // The server sanitised this HTML to an email-safe allowlist; the page's CSP runs no script.
    $("preview-body").innerHTML = prefill.html;
    const blocked = P.blockedReason(prefill);
    $("preview-blocked").textContent = blocked || "";
    $("preview-blocked").hidden = !blocked;
    $("preview-prompts").textContent = prefill.prompts.length
      ? "Replace before sending: " + prefill.prompts.join("; ") : "";
    $("preview-prompts").hidden = prefill.prompts.length === 0;
    const compose = state.mode === "compose";
    $("fill").hidden = !compose;
    $("open-new").hidden = compose;
    $("fill").disabled = !!blocked;
    $("open-new").disabled = !!blocked;
  }

  async function fill() {
    const id = state.selected;
    const prefill = state.prefill;
    if (!prefill) return;
    $("fill").disabled = true;
    try {
      // The header carries the task's opaque tag (it travels with the email to the recipient).
      const tag = P.capabilities(Office).internetHeaders
        ? await api.tag(id).then((r) => r.tag, () => null) : null;
      const done = await P.fillMessage(Office, id, prefill, state.token, tag);
      await api.opened(id).catch(() => {});
      setStatus("Filled from the task" + (done.tagged ? "" : " (this Outlook cannot tag the message, so " +
        "use Mark as sent after sending)") + ". Review it and send.", "success");
    } catch (e) {
      setStatus(e.message, "error");
    } finally {
      $("fill").disabled = !!P.blockedReason(prefill);
    }
  }

  async function openNew() {
    const id = state.selected;
    if (!state.prefill) return;
    try {
      const result = P.openInNewMessage(Office, state.prefill);
      if (result.opened) {
        await api.opened(id).catch(() => {});
        setStatus("Opened in a new message. After sending it, choose Mark as sent.", "success");
      } else {
        setStatus(result.message, "warning");
      }
    } catch (e) {
      setStatus("Outlook could not open a new message: " + e.message, "error");
    }
  }

  async function markSent() {
    const id = state.selected;
    if (!id) return;
    try {
      await api.markSent(id, new Date().toISOString());
      state.tasks = state.tasks.filter((t) => t.id !== id);
      state.selected = null;
      state.prefill = null;
      $("preview").hidden = true;
      renderList();
      setStatus("Marked as sent; the campaign moves on.", "success");
    } catch (e) {
      setStatus(e.message, "error");
    }
  }

  async function onItemChanged() {
    state.mode = P.itemMode(Office);
    document.body.dataset.mode = state.mode;
    state.selected = null;
    state.prefill = null;
    $("preview").hidden = true;
    if (state.token) await loadTasks();
  }

  function guard(fn) {
    return (...args) => Promise.resolve().then(() => fn(...args)).catch((e) => setStatus(e.message, "error"));
  }

  async function start() {
    state.config = await (await window.fetch(base + "/addin/outlook/config.json")).json();
    state.mode = P.itemMode(Office);
    state.caps = P.capabilities(Office);
    document.body.dataset.mode = state.mode;
    $("sign-in").addEventListener("click", guard(signIn));
    $("search").addEventListener("input", renderList);
    $("due").addEventListener("change", guard(loadTasks));
    $("fill").addEventListener("click", guard(fill));
    $("open-new").addEventListener("click", guard(openNew));
    $("mark-sent").addEventListener("click", guard(markSent));
    // A pinned pane stays open while the rep moves between messages: refresh on ItemChanged.
    P.watchItemChanges(Office, guard(onItemChanged));
    const me = await authenticate();
    if (me) {
      await showTasks(me);
    } else {
      $("signed-out").hidden = false;
    }
    document.body.dataset.ready = "true";
  }

  Office.onReady(() => guard(start)());
})();
