/*
 * Relay's Outlook task pane: the logic, with no DOM.
 *
 * Pure functions (what a prefill allows, how a task list is filtered) and the Office calls
 * behind a small adapter (`office` is the global Office object, or office-addin-mock's in
 * node tests; `api` is Relay's JSON API). taskpane.js wires these to the page. Loaded as a
 * plain script in the browser (window.RelayPane) and with require() in node tests.
 */
(function (root, factory) {
  "use strict";
  if (typeof module === "object" && module.exports) {
    module.exports = factory();
  } else {
    root.RelayPane = factory();
  }
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  /** displayNewMessageForm's limits (Outlook JavaScript API reference). */
  const NEW_MESSAGE_LIMITS = { htmlBytes: 32 * 1024, recipients: 100, subjectChars: 255 };
  const TASK_HEADER = "x-relay-task";
  const TOKEN_KEY = "relay.outlook.token";
  /** The sessionData key the send handler (events.js) reads: {task, token}. */
  const SESSION_KEY = "relay.send";

  function utf8Length(text) {
    return new TextEncoder().encode(text || "").length;
  }

  /** "compose", "read" or "none" (no item: the pane pinned, or opened with no selection). */
  function itemMode(office) {
    const mailbox = office && office.context && office.context.mailbox;
    const item = mailbox && mailbox.item;
    if (!item) return "none";
    if (item.to && typeof item.to.setAsync === "function") return "compose";
    return "read";
  }

  /** What this Outlook supports, asked with Office.context.requirements.isSetSupported. */
  function capabilities(office) {
    const req = office && office.context && office.context.requirements;
    const has = (name, version) =>
      !!(req && typeof req.isSetSupported === "function" && req.isSetSupported(name, version));
    return {
      internetHeaders: has("Mailbox", "1.8"),
      sessionData: has("Mailbox", "1.11"),
      newMessageForm: has("Mailbox", "1.6"),
      dialog: has("DialogApi", "1.1"),
      nestedAppAuth: has("NestedAppAuth", "1.1"),
    };
  }

  /** Why a prefill cannot fill a message (E5 blocked fields, no recipient), or null. */
  function blockedReason(prefill) {
    if (prefill.blocked && prefill.blocked.fields && prefill.blocked.fields.length) {
      return "This email can't be filled: " + prefill.blocked.fields.join(", ") +
        " has no value for this contact and no default. Fix the contact or the template in Relay.";
    }
    if (!prefill.to || prefill.to.length === 0) {
      return "This email can't be filled: the contact has no email address.";
    }
    return null;
  }

  function recipients(list) {
    return (list || []).map((r) => ({ displayName: r.name || r.email, emailAddress: r.email }));
  }

  /**
   * Whether displayNewMessageForm can carry this prefill: the HTML body at most 32 KB, at
   * most 100 recipients in all, a subject of at most 255 characters. `reasons` says what
   * does not fit.
   */
  function newMessageFit(prefill) {
    const reasons = [];
    const bytes = utf8Length(prefill.html);
    if (bytes > NEW_MESSAGE_LIMITS.htmlBytes) {
      reasons.push("the body is " + Math.ceil(bytes / 1024) + " KB (at most 32 KB)");
    }
    const count = (prefill.to || []).length + (prefill.cc || []).length + (prefill.bcc || []).length;
    if (count > NEW_MESSAGE_LIMITS.recipients) {
      reasons.push(count + " recipients (at most 100)");
    }
    if ((prefill.subject || "").length > NEW_MESSAGE_LIMITS.subjectChars) {
      reasons.push("the subject is longer than 255 characters");
    }
    return { ok: reasons.length === 0, reasons: reasons };
  }

  /** The displayNewMessageForm parameters of a prefill. */
  function newMessageParameters(prefill) {
    const params = {
      toRecipients: recipients(prefill.to),
      subject: prefill.subject,
      htmlBody: prefill.html,
    };
    if (prefill.cc && prefill.cc.length) params.ccRecipients = recipients(prefill.cc);
    if (prefill.bcc && prefill.bcc.length) params.bccRecipients = recipients(prefill.bcc);
    return params;
  }

  /** Tasks whose contact, company, campaign or title contains every word of `search`. */
  function filterTasks(tasks, search) {
    const words = (search || "").toLowerCase().split(/\s+/).filter(Boolean);
    if (!words.length) return tasks.slice();
    return tasks.filter((t) => {
      const hay = [t.title, t.contact && t.contact.name, t.contact && t.contact.email,
        t.contact && t.contact.company, t.campaign && t.campaign.name].join(" ").toLowerCase();
      return words.every((w) => hay.includes(w));
    });
  }

  /** Turn one Office callback API call into a promise; a failure names the step. */
  function officeCall(office, step, start) {
    return new Promise((resolve, reject) => {
      start((result) => {
        const failed = office.AsyncResultStatus
          ? result.status === office.AsyncResultStatus.Failed
          : result.status === "failed";
        if (failed) {
          const message = result.error && result.error.message ? result.error.message : "unknown error";
          reject(new Error("Outlook could not " + step + ": " + message));
        } else {
          resolve(result.value);
        }
      });
    });
  }

  /**
   * Fill the message being composed, in sequence: To (then Cc, Bcc), Subject, the body
   * (its type read first; HTML coercion for an HTML body), then the x-relay-task header where
   * Mailbox 1.8 is supported (``tag``: the task's opaque tag from Relay, never its id: the
   * header travels with the email to the recipient), then (Mailbox 1.11) the task and ``token`` in the item's
   * sessionData, which is where the send handler finds them on classic Outlook for Windows
   * (its runtime shares neither OfficeRuntime.storage nor localStorage with the pane).
   * Returns what was done.
   */
  async function fillMessage(office, taskId, prefill, token, tag) {
    const reason = blockedReason(prefill);
    if (reason) throw new Error(reason);
    const item = office.context.mailbox.item;
    const caps = capabilities(office);
    await officeCall(office, "set the recipients", (cb) => item.to.setAsync(recipients(prefill.to), cb));
    if (prefill.cc && prefill.cc.length) {
      await officeCall(office, "set Cc", (cb) => item.cc.setAsync(recipients(prefill.cc), cb));
    }
    if (prefill.bcc && prefill.bcc.length) {
      await officeCall(office, "set Bcc", (cb) => item.bcc.setAsync(recipients(prefill.bcc), cb));
    }
    await officeCall(office, "set the subject", (cb) => item.subject.setAsync(prefill.subject, cb));
    const bodyType = await officeCall(office, "read the body type", (cb) => item.body.getTypeAsync(cb));
    const html = bodyType === office.CoercionType.Html;
    await officeCall(office, "set the body", (cb) => item.body.setAsync(
      html ? prefill.html : prefill.text,
      { coercionType: html ? office.CoercionType.Html : office.CoercionType.Text }, cb));
    let tagged = false;
    if (caps.internetHeaders && item.internetHeaders && tag) {
      const headers = {};
      headers[TASK_HEADER] = String(tag);
      await officeCall(office, "tag the message", (cb) => item.internetHeaders.setAsync(headers, cb));
      tagged = true;
    }
    if (tagged && caps.sessionData && item.sessionData && token) {
      const value = JSON.stringify({ task: String(taskId), token: token });
      // The fill is done either way: without it the handler falls back to its own storage.
      await officeCall(office, "keep the send report's data",
        (cb) => item.sessionData.setAsync(SESSION_KEY, value, cb)).catch(() => null);
    }
    return { bodyType: html ? "html" : "text", tagged: tagged };
  }

  /**
   * Open a new message filled with the prefill, when displayNewMessageForm can carry it.
   * Returns {opened: true} or {opened: false, message} telling the rep what to do instead.
   */
  function openInNewMessage(office, prefill) {
    const reason = blockedReason(prefill);
    if (reason) return { opened: false, message: reason };
    const fit = newMessageFit(prefill);
    if (!fit.ok || !capabilities(office).newMessageForm) {
      const why = fit.ok ? "this Outlook cannot open a filled message" : fit.reasons.join("; ");
      return {
        opened: false,
        message: "This email is too large to open in a new message (" + why + "). Start a new " +
          "message in Outlook, open Relay tasks from its ribbon and choose Fill this message.",
      };
    }
    office.context.mailbox.displayNewMessageForm(newMessageParameters(prefill));
    return { opened: true };
  }

  /** Relay's JSON API with a bearer token; errors carry the server's message. */
  function makeApi(fetchFn, baseUrl, getToken) {
    async function call(method, path, body) {
      const headers = { Accept: "application/json" };
      const token = getToken();
      if (token) headers.Authorization = "Bearer " + token;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const resp = await fetchFn(baseUrl + path, {
        method: method, headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (!resp.ok) {
        const err = new Error((data && data.message) || ("Relay answered " + resp.status));
        err.status = resp.status;
        err.code = data && data.error;
        throw err;
      }
      return data;
    }
    return {
      tasks: (due) => call("GET", "/api/tasks?type=email&status=open&per_page=200&due=" +
        encodeURIComponent(due || "all")),
      prefill: (id) => call("GET", "/api/tasks/" + id + "/prefill"),
      opened: (id) => call("POST", "/api/tasks/" + id + "/opened", { via: "outlook" }),
      markSent: (id, sentAt) => call("POST", "/api/tasks/" + id + "/complete",
        { via: "outlook", sent_at: sentAt }),
      sending: (id) => call("POST", "/api/outlook/tasks/" + id + "/sending", {}),
      tag: (id) => call("POST", "/api/outlook/tasks/" + id + "/tag", {}),
      me: () => call("GET", "/api/outlook/me"),
      link: (microsoftToken) => call("POST", "/api/outlook/link", { microsoft_token: microsoftToken }),
    };
  }

  /** The task id a message was tagged with, from its internet headers ({name: value}). */
  function taggedTaskId(headers) {
    if (!headers) return null;
    for (const name of Object.keys(headers)) {
      if (name.toLowerCase() === TASK_HEADER && /^\s*\d{1,15}\s*$/.test(String(headers[name]))) {
        return parseInt(headers[name], 10);
      }
    }
    return null;
  }

  /** What to tell the rep when the sign-in dialog cannot open (Office dialog error codes). */
  const DIALOG_ERRORS = {
    12009: "The sign-in window was not allowed to open. Choose Sign in again and allow the window.",
    12011: "Your browser blocked the sign-in window. Allow pop-ups for Outlook (or use another " +
      "browser), then choose Sign in again.",
  };

  /**
   * Open Relay's sign-in page in an Office dialog and resolve with the token it hands back.
   * Outlook on the web asks the rep before opening it (promptBeforeOpen is left at its
   * default); a refused (12009) or blocked (12011) window rejects with what to do.
   */
  function openSignInDialog(office, url) {
    return new Promise((resolve, reject) => {
      office.context.ui.displayDialogAsync(url, { height: 60, width: 30 }, (result) => {
        if (result.status === office.AsyncResultStatus.Failed) {
          const code = result.error && result.error.code;
          reject(new Error(DIALOG_ERRORS[code] ||
            ("The sign-in window could not open: " + (result.error && result.error.message))));
          return;
        }
        const dialog = result.value;
        dialog.addEventHandler(office.EventType.DialogMessageReceived, (arg) => {
          dialog.close();
          try {
            const msg = JSON.parse(arg.message);
            if (msg.type === "relay-token" && msg.token) resolve(msg.token);
            else reject(new Error("Sign-in did not finish."));
          } catch (e) {
            reject(new Error("Sign-in did not finish."));
          }
        });
        dialog.addEventHandler(office.EventType.DialogEventReceived, () =>
          reject(new Error("The sign-in window was closed.")));
      });
    });
  }

  /**
   * A Microsoft token by nested app authentication: silently, and with MSAL's popup only when
   * the silent call says interaction is required (InteractionRequiredAuthError) and
   * ``interactive`` says we are handling the rep's click. Otherwise null (the pane then shows
   * its Sign in button). Other errors are not retried with a popup.
   */
  async function naaToken(pca, request, interactive) {
    try {
      return (await pca.acquireTokenSilent(request)).accessToken;
    } catch (e) {
      const needsInteraction = e && (e.name === "InteractionRequiredAuthError" ||
        e.errorCode === "interaction_required" || e.constructor && e.constructor.name === "InteractionRequiredAuthError");
      if (!needsInteraction || !interactive) return null;
      return (await pca.acquireTokenPopup(request)).accessToken;
    }
  }

  /**
   * Call ``onChange`` whenever the item changes under a pinned pane (Office.EventType.
   * ItemChanged, Mailbox 1.5): the pane refreshes its mode and list. Resolves to whether the
   * handler was registered.
   */
  function watchItemChanges(office, onChange) {
    const mailbox = office && office.context && office.context.mailbox;
    if (!mailbox || typeof mailbox.addHandlerAsync !== "function" || !office.EventType ||
        !office.EventType.ItemChanged) return Promise.resolve(false);
    return new Promise((resolve) => {
      mailbox.addHandlerAsync(office.EventType.ItemChanged, () => onChange(), (result) =>
        resolve(result.status !== office.AsyncResultStatus.Failed));
    });
  }

  return {
    DIALOG_ERRORS, openSignInDialog, naaToken, watchItemChanges,
    NEW_MESSAGE_LIMITS, TASK_HEADER, TOKEN_KEY, SESSION_KEY,
    itemMode, capabilities, blockedReason, newMessageFit, newMessageParameters, filterTasks,
    fillMessage, openInNewMessage, makeApi, taggedTaskId, utf8Length,
  };
});
