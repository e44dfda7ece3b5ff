/*
 * The last page of Relay's sign-in dialog: hand the scoped add-in token to the task pane
 * (Office.context.ui.messageParent) and let Outlook close the dialog.
 */
/* global Office */
(function () {
  "use strict";
  const el = document.getElementById("result");
  const token = el.dataset.token;
  el.removeAttribute("data-token");
  Office.onReady(() => {
    if (Office.context && Office.context.ui && Office.context.ui.messageParent) {
      Office.context.ui.messageParent(JSON.stringify({ type: "relay-token", token: token }));
    } else {
      el.querySelector(".message-bar").textContent = "Signed in. You can close this window.";
    }
  });
})();
