// Live Feed: prepend each Server-Sent Event to the panel; EventSource reconnects by itself
// (with Last-Event-ID), so nothing is missed when the server ends a stream.
(function () {
  "use strict";
  var list = document.getElementById("feed-list");
  if (!list || !window.EventSource) { return; }
  var state = document.getElementById("feed-state");
  var empty = document.getElementById("feed-empty");
  var source = new EventSource(list.dataset.src);
  function show(evt) {
    var data;
    try { data = JSON.parse(evt.data); } catch (e) { return; }
    if (document.getElementById("feed-" + data.id)) { return; }
    var li = document.createElement("li");
    li.id = "feed-" + data.id;
    li.className = "new";
    li.dataset.kind = data.kind;
    var when = document.createElement("time");
    when.dateTime = data.created_at;
    when.textContent = new Date(data.created_at).toLocaleString([], {weekday: "short", hour: "2-digit", minute: "2-digit"});
    li.appendChild(when);
    li.appendChild(document.createTextNode(data.summary));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 50) { list.removeChild(list.lastChild); }
    if (empty) { empty.hidden = true; }
  }
  list.dataset.kinds.split(" ").forEach(function (kind) { source.addEventListener(kind, show); });
  source.addEventListener("open", function () { state.textContent = "live"; state.className = "live on"; });
  source.addEventListener("error", function () { state.textContent = "reconnecting…"; state.className = "live"; });
})();
