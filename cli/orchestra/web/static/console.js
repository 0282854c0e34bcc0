// The console's script: live updates from /events, and the forms that answer and submit.
// The server renders every fragment; this only puts them in place by id.
"use strict";

(function () {
  const live = document.body.dataset.live;
  const conn = document.getElementById("conn");
  const SECTION = { waiting: "waiting", review: "waiting", running: "working", checking: "working", queued: "queued" };

  function fragment(html) {
    const t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function recount() {
    document.querySelectorAll("section.group").forEach((s) => {
      const n = s.querySelectorAll(".cards > .card").length;
      const c = s.querySelector("h2 .count");
      if (c) c.textContent = n;
    });
    const shown = document.getElementById("shown");
    const rows = document.getElementById("rows");
    if (shown && rows) shown.textContent = rows.children.length;
  }

  function keepAnswer(old, fresh) {
    // A question being answered stays as the person left it while the task changes around it.
    const before = old && old.querySelector(".question");
    const after = fresh.querySelector(".question");
    if (before && after && before.dataset.request === after.dataset.request && before.contains(document.activeElement)) {
      after.replaceWith(before);
    }
  }

  function placeCard(data) {
    const old = document.getElementById("task-" + data.id);
    const card = fragment(data.html);
    keepAnswer(old, card);
    const key = SECTION[data.status] || "finished";
    const holder = document.querySelector("#" + key + " .cards");
    if (old) old.remove();
    if (!holder) return;
    if (key === "finished") {
      holder.prepend(card);
    } else {
      const later = Array.from(holder.children).find((c) => Number(c.id.slice(5)) > data.id);
      holder.insertBefore(card, later || null);
    }
    bindForms(card);
    recount();
  }

  function placeRow(data) {
    const old = document.getElementById("task-" + data.id);
    const row = fragment("<table><tbody>" + data.html + "</tbody></table>").querySelector("tr");
    if (old) old.replaceWith(row);
    else document.getElementById("rows").prepend(row);
    recount();
  }

  function updateTask(data) {
    const head = document.getElementById("task-" + data.id);
    if (!head) return;
    head.dataset.status = data.status;
    const badge = head.querySelector(".facts .badge");
    if (badge) {
      badge.className = "badge s-" + data.status;
      badge.textContent = data.status;
    }
    const old = head.querySelector(".question");
    const fresh = data.question ? fragment(data.question) : null;
    if (old && fresh && old.dataset.request === fresh.dataset.request) return; // the same question: keep what is typed
    if (old && fresh) old.replaceWith(fresh);
    else if (old) old.remove();
    else if (fresh) head.append(fresh);
    if (fresh) bindForms(fresh);
  }

  function updateStep(data) {
    const step = document.getElementById("step-" + data.id);
    if (!step) return;
    step.setAttribute("class", "step s-" + data.status);
    const state = step.querySelector(".state");
    if (state) state.textContent = data.status + " · #" + data.id;
  }

  function connect() {
    if (!live) return;
    const [view, query] = live.split("?");
    const source = new EventSource("/events?view=" + view + (query ? "&" + query : ""));
    let broken = false;
    source.onopen = () => {
      if (broken) location.reload(); // what changed meanwhile was not seen: start again
      conn.className = "conn on";
    };
    source.onerror = () => {
      broken = true;
      conn.className = "conn off";
    };
    const on = (name, fn) => source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
    on("card", placeCard);
    on("row", placeRow);
    on("gone", (d) => {
      const row = document.getElementById("task-" + d.id);
      if (row && row.tagName === "TR") row.remove();
      recount();
    });
    on("task", updateTask);
    on("step", updateStep);
    on("clear", () => {
      const t = document.getElementById("transcript");
      if (t) t.textContent = "";
    });
    on("log", (d) => {
      const t = document.getElementById("transcript");
      if (!t) return;
      const atEnd = t.scrollTop + t.clientHeight >= t.scrollHeight - 4;
      t.append(d.text);
      if (atEnd) t.scrollTop = t.scrollHeight;
    });
    on("reload", () => location.reload());
  }

  function flash(where, text, bad) {
    let note = where.querySelector(".flash");
    if (!note) {
      note = document.createElement("div");
      where.append(note);
    }
    note.className = "flash" + (bad ? " bad" : "");
    note.textContent = text;
  }

  async function post(url, data) {
    const reply = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(data),
      credentials: "same-origin",
    });
    let answer = {};
    try {
      answer = await reply.json();
    } catch (e) {
      answer = { error: reply.status + " " + reply.statusText };
    }
    if (!reply.ok) throw new Error(answer.error || reply.statusText);
    return answer;
  }

  function fields(form, submitter) {
    const data = {};
    new FormData(form).forEach((v, k) => {
      data[k] = v;
    });
    form.querySelectorAll("input[type=checkbox]").forEach((c) => {
      data[c.name] = c.checked;
    });
    if (submitter && submitter.name) data[submitter.name] = submitter.value;
    return data;
  }

  function bindForms(root) {
    root.querySelectorAll("form[data-action]").forEach((form) => {
      if (form.dataset.bound) return;
      form.dataset.bound = "1";
      const send = async (submitter) => {
        const buttons = form.querySelectorAll("button");
        buttons.forEach((b) => (b.disabled = true));
        try {
          const answer = await post(form.dataset.action, fields(form, submitter));
          if (answer.url && form.dataset.then) location.href = answer.url;
          else flash(form, "sent");
        } catch (e) {
          flash(form, e.message, true);
          buttons.forEach((b) => (b.disabled = false));
        }
      };
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        if (event.submitter && event.submitter.tagName === "BUTTON") send(event.submitter);
      });
      form.querySelectorAll("input[data-enter]").forEach((input) => {
        input.addEventListener("keydown", (event) => {
          if (event.key !== "Enter") return;
          event.preventDefault(); // not the form's first button: what this field is for
          send({ name: "decision", value: input.dataset.enter });
        });
      });
    });
  }

  bindForms(document);
  connect();
})();
