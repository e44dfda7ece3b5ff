// Compose window: highlight field prompts {{! …}} in the body, keep Send / Schedule disabled
// while one remains (the server refuses them too), and copy the edited body into the form.
(function () {
  "use strict";
  var form = document.getElementById("compose");
  var editor = document.getElementById("body-editor");
  var field = document.getElementById("html");
  var subject = document.getElementById("subject");
  if (!form || !editor || !field) { return; }
  var PROMPT_G = /\{\{\s*!/g;
  var PROMPT_ALL = /\{\{\s*![^{}]*\}\}/g;
  var status = document.getElementById("prompt-status");
  var blocked = !!document.getElementById("blocked");
  var editable = editor.isContentEditable;

  function unwrap(mark) { mark.replaceWith.apply(mark, Array.from(mark.childNodes)); }

  function highlight() {
    // Wrap every prompt found in a text node in <mark class="prompt">; marks whose prompt is
    // gone are unwrapped, so the rep's own words never stay highlighted.
    editor.querySelectorAll("mark.prompt").forEach(function (m) {
      if (!/\{\{\s*!/.test(m.textContent)) { unwrap(m); }
    });
    var walker = document.createTreeWalker(editor, NodeFilter.SHOW_TEXT, null);
    var nodes = [];
    while (walker.nextNode()) {
      var n = walker.currentNode;
      var inside = n.parentNode && n.parentNode.closest && n.parentNode.closest("mark.prompt");
      PROMPT_ALL.lastIndex = 0;
      if (!inside && PROMPT_ALL.test(n.nodeValue)) { nodes.push(n); }
    }
    nodes.forEach(function (node) {
      var text = node.nodeValue, last = 0, frag = document.createDocumentFragment(), m;
      PROMPT_ALL.lastIndex = 0;
      while ((m = PROMPT_ALL.exec(text)) !== null) {
        frag.appendChild(document.createTextNode(text.slice(last, m.index)));
        var mark = document.createElement("mark");
        mark.className = "prompt";
        mark.textContent = m[0];
        frag.appendChild(mark);
        last = m.index + m[0].length;
      }
      frag.appendChild(document.createTextNode(text.slice(last)));
      node.parentNode.replaceChild(frag, node);
    });
  }

  function promptsLeft() {
    var n = (editor.textContent.match(PROMPT_G) || []).length;
    if (subject) { n += (subject.value.match(PROMPT_G) || []).length; }
    return n;
  }

  function refresh() {
    var left = promptsLeft();
    form.querySelectorAll("[data-needs-clean]").forEach(function (b) {
      b.disabled = blocked || !editable || left > 0;
    });
    if (status) {
      status.textContent = left > 0
        ? left + (left === 1 ? " prompt" : " prompts") + " left: replace the highlighted text with your own words before sending."
        : "All prompts replaced.";
    }
  }

  function cleanHtml() {
    var copy = editor.cloneNode(true);
    copy.querySelectorAll("mark.prompt").forEach(unwrap);
    return copy.innerHTML;
  }

  highlight();
  refresh();
  // Re-highlighting moves text nodes, which would move the caret: do it when the rep leaves
  // the editor, and only recount while they type.
  editor.addEventListener("input", refresh);
  editor.addEventListener("blur", function () { highlight(); refresh(); });
  if (subject) { subject.addEventListener("input", refresh); }
  form.addEventListener("submit", function () { field.value = cleanHtml(); });
  var errors = document.getElementById("errors");
  if (errors) { errors.focus(); }
})();
