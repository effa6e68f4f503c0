// The annotator's page: one task at a time, labeled from the keyboard.
// Talks to the labeling API with the token from the URL (#token=...) or the login form.
"use strict";

const $ = (id) => document.getElementById(id);
// choice: the label chosen (single-label task); chosen, none: the labels ticked and "none of them" (multi-label task)
const state = {token: null, me: null, task: null, choice: null, chosen: new Set(), none: false, busy: false,
  retry: null, tab: "label"};

// ------------------------------------------------------------------ helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function show(id) {
  for (const section of ["login", "empty", "task", "review"]) $(section).hidden = section !== id;
}

function say(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

function percent(x) {
  return `${Math.round(x * 100)}%`;
}

function number(x) {
  return Number.isInteger(x) ? String(x) : Number(x.toPrecision(4)).toString();
}

async function api(method, path, body) {
  const headers = {Authorization: `Bearer ${state.token}`};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  if (response.status === 401) {
    login("That token is not valid (any more).");
    throw new Error("unauthorized");
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && data.detail;
    const message = Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : detail || response.statusText;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

// ------------------------------------------------------------------ who and how fast

function login(error = "") {
  localStorage.removeItem("feedbackloop-token");
  state.token = null;
  $("login-error").textContent = error;
  show("login");
  $("token").focus();
}

async function refreshMe() {
  const me = await api("GET", "/api/me");
  state.me = me;
  $("who").textContent = `${me.annotator_id} (${me.role})`;
  const median = me.median_seconds === null ? "–" : `${me.median_seconds} s`;
  $("pace").textContent = `${me.labels} labeled · ${me.labels_last_hour} in the last hour · ${median} per label`;
  $("tab-review").hidden = me.role === "annotator";
}

// ------------------------------------------------------------------ one task

// A multi-label answer in words: its labels, or that none applies.
function setText(labels) {
  return labels.length ? labels.join(", ") : "none of the labels";
}

function render(task) {
  state.task = task;
  state.choice = null;
  state.chosen = new Set();
  state.none = false;
  $("item-id").textContent = task.item_id;
  $("kind").textContent = task.kind === "prediction" ? "" : task.kind;

  $("text").hidden = !task.text;
  $("text").textContent = task.text || "";
  const names = Object.keys(task.features).sort();
  const rows = $("features").tBodies[0];
  rows.replaceChildren(...names.map((name) =>
    el("tr", {}, el("th", {textContent: name}), el("td", {textContent: number(task.features[name])}))));
  $("features").hidden = names.length === 0;

  $("why").replaceChildren(...task.why.map((line) => el("li", {textContent: line})));
  const suggestedSet = task.multi_label && task.suggested_labels !== null;
  $("suggested").textContent = suggestedSet ? setText(task.suggested_labels)
    : task.suggested_label === null ? "no suggestion" : task.suggested_label;
  $("confidence").textContent = task.suggested_label === null && !suggestedSet ? ""
    : `model's confidence ${percent(task.confidence)}`;
  $("confidence-bar").style.width = percent(task.confidence);

  $("notes-box").hidden = task.notes.length === 0;
  $("notes").replaceChildren(...task.notes.map((n) =>
    el("li", {}, el("b", {textContent: `${n.annotator_id} (${n.kind}): `}), n.note)));

  $("guideline").textContent = task.guideline;
  $("guideline-title").textContent = task.guideline_title;
  $("guideline-title").hidden = !task.guideline_title;
  $("guideline-version").textContent = task.guideline_version ? `version ${task.guideline_version}` : "";
  // the worked examples of the class the model suggests: what that label looks like
  const examples = (task.suggested_label !== null && task.examples[task.suggested_label]) || [];
  $("examples-label").textContent = task.suggested_label || "";
  $("examples").replaceChildren(...examples.map((text) => el("li", {textContent: text})));
  $("examples-box").hidden = examples.length === 0;
  const meanings = Object.entries(task.label_guidelines);
  $("label-guidelines").replaceChildren(...meanings.flatMap(([label, meaning]) =>
    [el("dt", {textContent: label}), el("dd", {textContent: meaning})]));

  if (task.multi_label) renderChecks(task); else renderChoices(task);
  $("note").value = "";
  const until = new Date(task.lease_until_ms);
  $("lease").textContent = `yours until ${until.toLocaleTimeString()}`;
  show("task");
  document.activeElement && document.activeElement.blur();
}

// A multi-label task: a checkbox per label (1-9 tick and untick), and "none of these" (0), so that
// an empty answer is said, never assumed.
function renderChecks(task) {
  const suggested = new Set(task.suggested_labels || []);
  const box = (value, key, text) => {
    const input = el("input", {type: "checkbox", tabIndex: -1});
    input.dataset.label = value;
    input.addEventListener("change", () => tick(value));
    const row = el("label", {className: "choice check"}, input, " ", ...(key ? [el("kbd", {textContent: key}), " "] : []),
      text);
    if (suggested.has(value)) row.classList.add("suggested");
    return row;
  };
  $("choices").setAttribute("role", "group");
  $("choices").setAttribute("aria-label", "labels that apply");
  $("choices").replaceChildren(
    ...task.label_set.map((label, i) => box(label, i < 9 ? String(i + 1) : "", label)),
    box("", "0", "none of these"));
  $("choices").lastChild.classList.add("none");
  $("choices").classList.remove("binary");
  $("submit").firstChild.textContent = "Submit the ticked labels ";
}

// Tick or untick a label ("" is "none of these": it clears the labels, a label clears it).
function tick(label) {
  if (label === "") {
    state.none = !state.none;
    if (state.none) state.chosen.clear();
  } else {
    state.chosen.has(label) ? state.chosen.delete(label) : state.chosen.add(label);
    if (state.chosen.size) state.none = false;
  }
  for (const input of $("choices").querySelectorAll("input")) {
    const on = input.dataset.label === "" ? state.none : state.chosen.has(input.dataset.label);
    input.checked = on;
    input.parentElement.classList.toggle("chosen", on);
  }
  const chosen = state.task.label_set.filter((l) => state.chosen.has(l));
  say(chosen.length || state.none ? `${setText(chosen)} — Enter to submit` : "");
}

function renderChoices(task) {
  $("choices").setAttribute("role", "radiogroup");
  $("choices").setAttribute("aria-label", "label");
  $("submit").firstChild.textContent = "Submit ";
  $("choices").replaceChildren(...task.label_set.map((label, i) => {
    const button = el("button", {type: "button", className: "choice", role: "radio"},
      ...(i < 9 ? [el("kbd", {textContent: String(i + 1)}), " "] : []), label);
    button.dataset.label = label;
    button.setAttribute("aria-checked", "false");
    if (label === task.suggested_label) button.classList.add("suggested");
    button.addEventListener("click", () => choose(label));
    return button;
  }));
  $("choices").classList.toggle("binary", task.label_set.length === 2);
}

function choose(label) {
  state.choice = label;
  for (const button of $("choices").children) {
    const on = button.dataset.label === label;
    button.classList.toggle("chosen", on);
    button.setAttribute("aria-checked", String(on));
  }
  say(`${label} — Enter to submit`);
}

async function next() {
  clearTimeout(state.retry);
  if (state.tab !== "label") return;
  try {
    const task = await api("POST", "/api/tasks/next");
    if (task === null) {
      state.task = null;
      $("empty-text").textContent = "No task is waiting. Checking again every few seconds.";
      show("empty");
      state.retry = setTimeout(next, 3000);
    } else {
      render(task);
    }
  } catch (error) {
    if (error.status === 423) {  // paused by the gold checks until a reviewer re-admits
      state.task = null;
      $("empty-text").textContent = `Paused: ${error.message}. Checking again every 30 seconds.`;
      show("empty");
      state.retry = setTimeout(next, 30000);
    } else if (error.message !== "unauthorized") {
      say(`Could not get a task: ${error.message}. Trying again.`, "error");
      state.retry = setTimeout(next, 3000);
    }
  }
}

async function act(what, request) {
  if (state.busy || !state.task) return;
  state.busy = true;
  const task = state.task;
  try {
    const result = await request(task);
    say(what(result), "ok");
    await refreshMe();
    await next();
  } catch (error) {
    if (error.status === 503) {  // stored, not yet on Kafka: submitting again is safe
      say(`${error.message}`, "error");
    } else if (error.status === 409 || error.status === 404) {
      say(`${error.message}. Here is the next task.`, "error");
      await next();
    } else if (error.message !== "unauthorized") {
      say(error.message, "error");
    }
  } finally {
    state.busy = false;
  }
}

function submit() {
  if (state.task.multi_label) {
    submitSet();
    return;
  }
  if (!state.choice) {
    say(`Choose a label first: 1–${Math.min(9, state.task.label_set.length)}.`, "error");
    return;
  }
  const note = $("note").value.trim() || null;
  const label = state.choice;
  act((r) => `Sent “${r.label}” for ${r.task_id.slice(0, 8)}${r.duplicate ? " (already sent before)" : ""}.`,
    (task) => api("POST", `/api/tasks/${encodeURIComponent(task.task_id)}/label`, {label, note}));
}

function submitSet() {
  const labels = state.task.label_set.filter((l) => state.chosen.has(l));
  if (!labels.length && !state.none) {
    say(`Tick the labels that apply (1–${Math.min(9, state.task.label_set.length)}), or 0 if none of them does.`,
      "error");
    return;
  }
  const note = $("note").value.trim() || null;
  act((r) => `Sent “${setText(r.labels)}” for ${r.task_id.slice(0, 8)}${r.duplicate ? " (already sent before)" : ""}.`,
    (task) => api("POST", `/api/tasks/${encodeURIComponent(task.task_id)}/label`, {labels, note}));
}

function skip() {
  act(() => "Skipped.", (task) => api("POST", `/api/tasks/${encodeURIComponent(task.task_id)}/skip`));
}

function flag() {
  const note = $("note").value.trim();
  if (!note) {
    say("Say in the note what makes it ambiguous, then flag it (F).", "error");
    $("note").focus();
    return;
  }
  act(() => "Flagged for a reviewer.",
    (task) => api("POST", `/api/tasks/${encodeURIComponent(task.task_id)}/flag`, {note}));
}

// ------------------------------------------------------------------ reviewers

async function review() {
  const tasks = await api("GET", "/api/review/flagged");
  $("flagged-count").textContent = tasks.length ? `(${tasks.length})` : "";
  $("review-empty").hidden = tasks.length > 0;
  $("flagged").replaceChildren(...tasks.map((task) => {
    const what = task.text || Object.entries(task.features).map(([k, v]) => `${k}=${number(v)}`).join(", ");
    const note = el("input", {type: "text", placeholder: "note (optional)", maxLength: 2000});
    const decide = async (request, done) => {
      try {
        await request(note.value.trim() || null);
        say(done, "ok");
      } catch (error) {
        say(error.message, "error");
      }
      await review();
    };
    const id = encodeURIComponent(task.task_id);
    return el("li", {},
      el("p", {}, el("code", {textContent: task.item_id}), ` ${what}`),
      el("p", {className: "muted", textContent: task.why.join("; ")}),
      el("ul", {}, ...task.notes.map((n) => el("li", {textContent: `${n.annotator_id} (${n.kind}): ${n.note}`}))),
      el("div", {className: "actions"},
        ...(task.multi_label ? reviewChecks(task, id, decide) : task.label_set.map((label) => el("button", {
          type: "button", textContent: label,
          onclick: () => decide((n) => api("POST", `/api/review/${id}/label`, {label, note: n}), `Labeled “${label}”.`),
        }))),
        el("button", {
          type: "button", textContent: "back to the queue",
          onclick: () => decide((n) => api("POST", `/api/review/${id}/requeue`, {note: n}), "Back in the queue."),
        }),
        note));
  }));
}

// A reviewer's set for a multi-label task: tick what applies; nothing ticked is sent as "none of the labels".
function reviewChecks(task, id, decide) {
  const inputs = task.label_set.map((label) => Object.assign(el("input", {type: "checkbox"}), {value: label}));
  const send = el("button", {type: "button", textContent: "label: none of the labels"});
  const ticked = () => inputs.filter((i) => i.checked).map((i) => i.value);
  for (const input of inputs) input.addEventListener("change", () => { send.textContent = `label: ${setText(ticked())}`; });
  send.addEventListener("click", () => {
    const labels = ticked();
    decide((n) => api("POST", `/api/review/${id}/label`, {labels, note: n}), `Labeled “${setText(labels)}”.`);
  });
  return [...inputs.map((input) => el("label", {className: "check"}, input, ` ${input.value}`)), send];
}

function tab(name) {
  state.tab = name;
  $("tab-label").classList.toggle("current", name === "label");
  $("tab-review").classList.toggle("current", name === "review");
  if (name === "review") {
    clearTimeout(state.retry);
    show("review");
    review().catch((error) => say(error.message, "error"));
  } else {
    state.task ? show("task") : next();
  }
}

// ------------------------------------------------------------------ keyboard

function onKey(event) {
  if (state.tab !== "label" || !state.task || $("task").hidden) return;
  if (event.ctrlKey || event.metaKey || event.altKey) {
    if (event.key === "Enter" && event.target === $("note")) {
      event.preventDefault();
      submit();
    }
    return;
  }
  if (event.target === $("note")) {
    if (event.key === "Escape") $("note").blur();
    return;
  }
  if (event.target.tagName === "INPUT") return;
  const key = event.key;
  if (state.task.multi_label && /^[0-9]$/.test(key)) {
    const label = key === "0" ? "" : state.task.label_set[Number(key) - 1];
    if (label !== undefined) tick(label);
  } else if (/^[1-9]$/.test(key)) {
    const label = state.task.label_set[Number(key) - 1];
    if (label !== undefined) choose(label);
  } else if (key === "Enter") {
    submit();
  } else if (key === "s" || key === "S") {
    skip();
  } else if (key === "f" || key === "F") {
    flag();
  } else if (key === "n" || key === "N") {
    $("note").focus();
  } else {
    return;
  }
  event.preventDefault();
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    await refreshMe();
  } catch (error) {
    if (error.message !== "unauthorized") say(`The service does not answer: ${error.message}`, "error");
    return;
  }
  tab("label");
}

document.addEventListener("DOMContentLoaded", () => {
  const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromUrl) {
    localStorage.setItem("feedbackloop-token", fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = localStorage.getItem("feedbackloop-token");
  document.addEventListener("keydown", onKey);
  $("answer").addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  $("skip").addEventListener("click", skip);
  $("flag").addEventListener("click", flag);
  $("tab-label").addEventListener("click", () => tab("label"));
  $("tab-review").addEventListener("click", () => tab("review"));
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem("feedbackloop-token", state.token);
    start();
  });
  if (state.token) start(); else login();
});
