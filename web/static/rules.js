// A listener's forwarding rules. In the rules table, a rule dragged by its handle and
// dropped on another takes that one's place: the move is posted like the up and down
// buttons' forms (which work without this script). On the rule form, only the chosen
// action's and path match's fields show. A file, not inline script: the console's CSP.
(function () {
  "use strict";

  function post(action, fields) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = action;
    for (const [name, value] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
  }

  function sortable(table) {
    const rows = () => Array.from(table.querySelectorAll("tbody tr[data-route]"));
    const token = document.querySelector("input[name=csrf_token]");
    let dragged = null;
    const clear = () => rows().forEach((row) => row.classList.remove("dragging", "drop-target"));
    table.addEventListener("dragstart", (event) => {
      const handle = event.target.closest ? event.target.closest(".drag-handle") : null;
      if (!handle) return;
      dragged = handle.closest("tr");
      dragged.classList.add("dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged.dataset.route);
      event.dataTransfer.setDragImage(dragged, 12, 12);
    });
    table.addEventListener("dragover", (event) => {
      const row = event.target.closest ? event.target.closest("tr[data-route]") : null;
      if (!dragged || !row) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "move";
      rows().forEach((r) => r.classList.toggle("drop-target", r === row && r !== dragged));
    });
    table.addEventListener("drop", (event) => {
      const row = event.target.closest ? event.target.closest("tr[data-route]") : null;
      if (!dragged || !row) return;
      event.preventDefault();
      if (row !== dragged && token) {
        post(dragged.dataset.move, {
          csrf_token: token.value,
          version: table.dataset.version,
          position: String(rows().indexOf(row)),
        });
      }
    });
    table.addEventListener("dragend", () => { dragged = null; clear(); });
  }

  function showChosen(form) {
    const action = form.querySelector("input[name=action]:checked");
    const match = form.querySelector("select[name=match]").value;
    form.querySelectorAll("[data-for-action]").forEach((part) => {
      part.hidden = !action || part.dataset.forAction !== action.value;
    });
    form.querySelectorAll("[data-for-match]").forEach((part) => {
      part.hidden = part.dataset.forMatch !== match;
    });
    form.querySelectorAll("[data-unless-match]").forEach((part) => {
      part.hidden = part.dataset.unlessMatch === match;
    });
  }

  const table = document.querySelector("table#routes[data-version]");
  if (table) sortable(table);
  const form = document.getElementById("rule-form");
  if (form) {
    form.addEventListener("change", () => showChosen(form));
    showChosen(form);
  }
})();
