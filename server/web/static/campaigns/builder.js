// The campaign builder: add and remove days and steps, and keep each step's choices valid
// for where it stands (S1-S4). The form stays the single source of state; the server
// validates on save. Without this script the same buttons post the form instead.
(function () {
  "use strict";
  var form = document.getElementById("builder");
  var days = document.getElementById("days");
  if (!form || !days) return;
  var labels = JSON.parse(document.getElementById("builder-data").textContent).labels;
  var stepProto = document.getElementById("step-proto");
  var dayProto = document.getElementById("day-proto");

  // S1: the first step offers choose_at_launch (day 1 only), at_time and task;
  // S2: every later email step offers same_as_previous, at_time and task.
  function allowedOptions(position, day) {
    if (position === 0) {
      return (day <= 1 ? ["choose_at_launch"] : []).concat(["at_time", "task"]);
    }
    return ["same_as_previous", "at_time", "task"];
  }

  function show(el, visible) {
    el.hidden = !visible;
    el.querySelectorAll("input, select, textarea").forEach(function (c) { c.disabled = !visible; });
  }

  function rename(scope, prefix, attr) {
    scope.querySelectorAll("[" + attr + "]").forEach(function (el) {
      var name = prefix + el.getAttribute(attr);
      el.name = name;
      el.id = name;
    });
  }

  function relabel(scope, prefix) {
    scope.querySelectorAll("label[data-for]").forEach(function (l) {
      l.htmlFor = prefix + l.getAttribute("data-for");
    });
  }

  function setOptions(select, allowed, current) {
    var keep = allowed.indexOf(current) >= 0 ? current : "";
    select.innerHTML = "";
    var blank = new Option("Choose…", "");
    select.add(blank);
    allowed.forEach(function (value) { select.add(new Option(labels[value], value)); });
    select.value = keep;
  }

  // Re-number every day and step, then show each step only the choices valid where it is.
  function refresh() {
    var position = 0;
    var previousType = null;
    days.querySelectorAll("[data-group]").forEach(function (group, g) {
      var gp = "groups-" + g + "-";
      rename(group, gp, "data-gfield");
      group.querySelector(".day-head label").htmlFor = gp + "day";
      group.querySelector(".day-head label").id = gp + "label";
      group.setAttribute("aria-labelledby", gp + "label");
      group.querySelector(".add-step label").htmlFor = gp + "new_type";
      group.querySelector("[data-add-step]").value = "add_step:" + g;
      group.querySelector("[data-remove-day]").value = "remove_day:" + g;
      var day = parseInt(group.querySelector("[data-gfield=day]").value, 10) || 0;
      group.querySelectorAll("[data-step]").forEach(function (step, n) {
        var sp = "steps-" + position + "-";
        rename(step, sp, "data-field");
        relabel(step, sp);
        step.querySelector("[data-field=group]").value = g;
        var num = step.querySelector("[data-num]");
        num.textContent = "Step " + (n + 1);
        num.id = sp + "head";
        step.setAttribute("aria-labelledby", sp + "head");
        step.querySelector("[data-remove-step]").value = "remove_step:" + position;
        var type = step.querySelector("[data-field=type]").value;
        var isEmail = type === "email";
        var optionSelect = step.querySelector("[data-field=send_option]");
        if (isEmail) setOptions(optionSelect, allowedOptions(position, day), optionSelect.value);
        step.querySelectorAll("[data-show=email]").forEach(function (el) { show(el, isEmail); });
        show(step.querySelector("[data-show=at_time]"), isEmail && optionSelect.value === "at_time");
        // S4: the follow-up checkbox exists only right after an email step.
        var follow = step.querySelector("[data-show=follow_up]");
        var offered = isEmail && position > 0 && previousType === "email";
        if (!offered) follow.querySelector("input").checked = false;
        show(follow, offered);
        show(step.querySelector("[data-show=task]"), !isEmail);
        previousType = type;
        position += 1;
      });
    });
  }

  function fromTemplate(tpl) {
    return tpl.content.firstElementChild.cloneNode(true);
  }

  function addStep(group, type) {
    var step = fromTemplate(stepProto);
    step.querySelector("[data-field=type]").value = type;
    group.querySelector("[data-steps]").appendChild(step);
    refresh();
    step.querySelector("[data-field=type]").focus();
  }

  function addDay() {
    var groups = days.querySelectorAll("[data-group]");
    var last = 0;
    groups.forEach(function (g) {
      last = Math.max(last, parseInt(g.querySelector("[data-gfield=day]").value, 10) || 0);
    });
    var group = fromTemplate(dayProto);
    group.querySelector("[data-gfield=day]").value = last + 1;
    days.appendChild(group);
    addStep(group, "email");
  }

  form.addEventListener("click", function (event) {
    var button = event.target.closest("button");
    if (!button || !form.contains(button)) return;
    if (button.hasAttribute("data-add-step")) {
      event.preventDefault();
      var group = button.closest("[data-group]");
      addStep(group, group.querySelector("[data-gfield=new_type]").value);
    } else if (button.id === "add-day") {
      event.preventDefault();
      addDay();
    } else if (button.hasAttribute("data-remove-step")) {
      event.preventDefault();
      var container = button.closest("[data-steps]");
      button.closest("[data-step]").remove();
      refresh();
      var next = container.querySelector("[data-field=type]") || document.getElementById("add-day");
      if (next) next.focus();
    } else if (button.hasAttribute("data-remove-day")) {
      event.preventDefault();
      button.closest("[data-group]").remove();
      refresh();
      document.getElementById("add-day").focus();
    }
  });
  form.addEventListener("change", refresh);
  form.addEventListener("input", function (event) {
    if (event.target.getAttribute("data-gfield") === "day") refresh();
  });
  refresh();
})();
