// The launch dialog: filter the contact list as you type (keeping choices), count the
// chosen people, and bring the preview into view.
(function () {
  "use strict";
  var list = document.getElementById("contact-list");
  var search = document.getElementById("contact-search");
  var q = document.getElementById("q");
  var count = document.getElementById("chosen-count");
  var all = document.getElementById("select-all");
  function boxes() { return list ? list.querySelectorAll("input[name=contact_ids]") : []; }
  function update() {
    var n = 0;
    boxes().forEach(function (b) { if (b.checked) n += 1; });
    if (count) count.textContent = n ? "(" + n + " chosen)" : "";
  }
  if (list && search && q) {
    // Filtering in the page keeps the boxes already ticked; the server search stays for
    // lists longer than the page shows.
    search.addEventListener("submit", function (event) { event.preventDefault(); });
    q.addEventListener("input", function () {
      var term = q.value.trim().toLowerCase();
      list.querySelectorAll("label[data-search]").forEach(function (label) {
        label.hidden = term !== "" && label.getAttribute("data-search").indexOf(term) < 0;
      });
    });
  }
  if (all) {
    all.addEventListener("change", function () {
      boxes().forEach(function (b) { if (!b.closest("label").hidden) b.checked = all.checked; });
      update();
    });
  }
  if (list) list.addEventListener("change", update);
  update();
  var preview = document.getElementById("preview");
  if (preview) preview.focus();
})();
