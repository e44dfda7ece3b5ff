// Template editor: a live preview fetched as the rep types, and "go to line" for errors.
(function () {
  "use strict";
  var form = document.getElementById("template-form");
  var out = document.getElementById("preview-output");
  var body = document.getElementById("body_html");
  if (!form || !out || !body) return;
  var timer = null;
  var seq = 0;

  function refresh() {
    var data = new FormData(form);
    data.delete("action");
    var mine = ++seq;
    fetch(out.getAttribute("data-url"), {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" }
    }).then(function (response) { return response.text(); }).then(function (html) {
      if (mine === seq) out.innerHTML = html;  // a slower, older answer never wins
    }).catch(function () {
      if (mine === seq) out.innerHTML = '<p class="alert" role="alert">The preview could not be loaded; check your connection.</p>';
    });
  }

  function soon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 350);
  }

  // Put the caret on a line (and column) of the body and scroll it into view.
  function gotoLine(line, column) {
    var lines = body.value.split("\n");
    var offset = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    var end = offset + (lines[line - 1] || "").length;
    body.focus();
    body.setSelectionRange(Math.min(offset + Math.max(column - 1, 0), end), end);
    var lineHeight = parseFloat(getComputedStyle(body).lineHeight) || 18;
    body.scrollTop = Math.max(0, (line - 3) * lineHeight);
  }

  ["name", "subject", "body_html"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) el.addEventListener("input", soon);
  });
  var contact = document.getElementById("contact_id");
  if (contact) contact.addEventListener("change", refresh);
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-goto-line]");
    if (!button) return;
    gotoLine(parseInt(button.getAttribute("data-goto-line"), 10),
             parseInt(button.getAttribute("data-goto-column"), 10) || 1);
  });
  var preview = document.getElementById("preview-button");
  if (preview) preview.addEventListener("click", function (event) { event.preventDefault(); refresh(); });
  refresh();
})();
