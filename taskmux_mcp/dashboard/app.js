// The taskmux dashboard: one page on the bridge's JSON-RPC at /ws (same origin; the login
// cookie authenticates it). Plain DOM, no framework. Task output is only ever inserted as text.
"use strict";

const MAX_LOG_LINES = 3000; // log lines kept in the page
const LOG_HISTORY = 500; // lines of history asked for when a task's log is opened
const MAX_EVENTS = 500; // event rows kept in the page
const STATUS_DELAY_MS = 150; // events arriving together cost one status request
const ACTIONS = ["start", "stop", "restart", "kill"];
const LIVE = new Set(["running", "starting", "unhealthy", "restarting"]);
const PASSING = new Set(["starting", "restarting"]); // may end without an event: asked again
const PASSING_MS = 1000;

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ formatting

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

function clock(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? iso : when.toLocaleTimeString([], { hour12: false });
}

function lastExit(task) {
  if (task.exit_signal) return task.exit_signal;
  if (task.exit_code !== null && task.exit_code !== undefined) return `code ${task.exit_code}`;
  return "—";
}

function details(values) {
  return Object.entries(values || {})
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .filter(([, value]) => !(Array.isArray(value) && value.length === 0))
    .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`)
    .join("  ");
}

// An end that was not a success: a non-zero status, or a signal.
function badExit(code, signal) {
  return Boolean(signal) || (code !== null && code !== undefined && code !== 0);
}

function taskUrl(port) {
  const host = location.hostname;
  const loopback = host === "localhost" || host.startsWith("127.") || host === "[::1]";
  return `http://${loopback ? "127.0.0.1" : host}:${port}/`;
}

// ------------------------------------------------------------------ errors and notices

function showError(message, detail) {
  const item = el("li", { class: "error" }, el("span", { text: message }));
  if (detail) item.append(el("pre", { text: detail }));
  const close = el("button", { type: "button", class: "close", text: "×", title: "dismiss" });
  close.addEventListener("click", () => item.remove());
  item.prepend(close);
  const list = $("errors");
  list.prepend(item);
  while (list.children.length > 5) list.lastChild.remove();
}

// A failed call's error, shown unless the connection went away (the badge says that).
function report(what, error) {
  if (!error || !error.lost) showError(`${what}: ${rpcMessage(error)}`);
}

function rpcMessage(error) {
  if (!error) return "unknown error";
  let text = error.message || String(error);
  if (error.data && Array.isArray(error.data.problems)) text += "\n" + error.data.problems.join("\n");
  return text;
}

// ------------------------------------------------------------------ the connection

class Bridge {
  constructor(handlers) {
    this.handlers = handlers;
    this.nextId = 1;
    this.pending = new Map();
    this.delay = 500;
    this.ws = null;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    this.ws = ws;
    this.handlers.state("connecting", "connecting…");
    ws.addEventListener("open", () => {
      this.delay = 500;
      this.handlers.state("open", "live");
      this.handlers.open();
    });
    ws.addEventListener("message", (message) => this.receive(message.data));
    ws.addEventListener("close", () => this.closed(ws));
  }

  closed(ws) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const { reject } of this.pending.values()) reject({ message: "connection lost", lost: true });
    this.pending.clear();
    const wait = this.delay;
    this.delay = Math.min(this.delay * 2, 15000);
    this.handlers.state("closed", `disconnected; retrying in ${Math.round(wait / 1000) || 1}s`);
    this.handlers.closed();
    setTimeout(() => this.connect(), wait * (0.8 + Math.random() * 0.4));
  }

  receive(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    if (message.id !== undefined && message.id !== null && this.pending.has(message.id)) {
      const { resolve, reject } = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.error) reject(message.error);
      else resolve(message.result);
    } else if (message.method) {
      this.handlers.notify(message.method, message.params || {});
    } else if (message.error) {
      showError(`bridge: ${rpcMessage(message.error)}`);
    }
  }

  // A request: its id, and a promise of its result (rejected with the JSON-RPC error).
  request(method, params = {}) {
    const id = this.nextId++;
    const done = new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject({ message: "not connected to taskmux serve", lost: true });
        return;
      }
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
    return { id, done };
  }

  call(method, params = {}) {
    return this.request(method, params).done;
  }
}

// ------------------------------------------------------------------ the dashboard

class Dashboard {
  constructor() {
    this.tasks = new Map(); // name -> {status, received (ms)}
    this.rows = new Map(); // name -> the row's cells
    this.busy = new Map(); // name -> action running from this page
    this.selected = null;
    this.followId = null; // a follow whose reply has not come yet: its lines are the next ones
    this.statusTimer = null;
    this.passingTimer = null;
    this.statusRunning = false;
    this.statusAgain = false;
    this.seenEvents = new Set();
    this.pendingLines = [];
    this.drawScheduled = false;
    this.bridge = new Bridge({
      state: (state, text) => this.connection(state, text),
      open: () => this.opened(),
      closed: () => document.body.classList.add("stale"),
      notify: (method, params) => this.notified(method, params),
    });
    $("log-task").addEventListener("change", () => this.select($("log-task").value));
    const log = $("log");
    log.addEventListener("scroll", () => ($("log-end").hidden = this.atEnd()));
    $("log-end").addEventListener("click", () => {
      log.scrollTop = log.scrollHeight;
      $("log-end").hidden = true;
    });
    setInterval(() => this.tick(), 1000);
  }

  connection(state, text) {
    const badge = $("connection");
    badge.dataset.state = state;
    badge.textContent = text;
    if (state === "closed") this.checkLogin();
  }

  async checkLogin() {
    // The WebSocket does not say why it failed: a 401 on a page asset does (a new token).
    try {
      const answer = await fetch("/assets/app.css", { method: "HEAD", cache: "no-store" });
      if (answer.status === 401) {
        $("connection").textContent = "not logged in: open the dashboard URL that taskmux serve prints";
      }
    } catch {
      // the server is down: the badge already says so
    }
  }

  async opened() {
    document.body.classList.remove("stale");
    this.refreshStatus();
    try {
      await this.bridge.call("subscribe");
      const history = await this.bridge.call("events", { limit: 100 });
      for (const event of history.events) this.addEvent(event);
    } catch (error) {
      report("events", error);
    }
    if (this.selected) this.follow(this.selected);
  }

  notified(method, params) {
    if (method === "event") {
      this.addEvent(params);
      this.refreshStatus();
    } else if (method === "log") {
      if (this.followId === null && params.task === this.selected) this.queueLine(params);
    } else if (method === "progress") {
      $("activity").textContent = params.message || "";
    }
  }

  // -------------------------------------------------------------- status

  // One status request for a burst of events; one more if events came while it ran.
  refreshStatus() {
    if (this.statusRunning) {
      this.statusAgain = true;
      return;
    }
    if (this.statusTimer === null) this.statusTimer = setTimeout(() => this.loadStatus(), STATUS_DELAY_MS);
  }

  async loadStatus() {
    this.statusTimer = null;
    this.statusRunning = true;
    this.statusAgain = false;
    try {
      this.render(await this.bridge.call("status"));
    } catch (error) {
      report("status", error);
    } finally {
      this.statusRunning = false;
      if (this.statusAgain) this.refreshStatus();
    }
  }

  render(status) {
    $("project").textContent = status.project;
    document.title = `taskmux: ${status.project}`;
    const monitor = status.monitor || {};
    $("monitor").textContent = monitor.acting
      ? `monitor: ${monitor.host || "?"} (pid ${monitor.pid})`
      : "no monitor acting: restart policies are not applied";
    const warnings = $("warnings");
    warnings.replaceChildren();
    for (const text of [status.config_error, ...(status.warnings || [])].filter(Boolean)) {
      warnings.append(el("li", { text }));
    }
    const now = performance.now();
    const names = status.tasks.map((task) => task.name);
    for (const name of [...this.rows.keys()]) {
      if (!names.includes(name)) {
        this.rows.get(name).row.remove();
        this.rows.delete(name);
        this.tasks.delete(name);
      }
    }
    const body = $("tasks").tBodies[0];
    for (const task of status.tasks) {
      this.tasks.set(task.name, { status: task, received: now });
      const cells = this.rows.get(task.name) || this.makeRow(task.name);
      body.append(cells.row); // keeps the server's order
      this.fillRow(task, cells);
    }
    this.fillSelect(status.tasks);
    if (status.tasks.some((task) => PASSING.has(task.state))) {
      clearTimeout(this.passingTimer);
      this.passingTimer = setTimeout(() => this.refreshStatus(), PASSING_MS);
    }
  }

  makeRow(name) {
    const cell = (label) => el("td", { "data-label": label });
    const cells = {
      name: el("td", { class: "name" }),
      state: cell("state"),
      health: cell("health"),
      pid: cell("pid"),
      port: cell("port"),
      uptime: cell("uptime"),
      restarts: cell("restarts"),
      exit: cell("last exit"),
      actions: el("td", { class: "actions" }),
      buttons: {},
    };
    const link = el("button", { type: "button", class: "link", text: name, title: "show its log" });
    link.addEventListener("click", () => this.select(name));
    cells.name.append(link);
    const buttons = el("div");
    for (const action of ACTIONS) {
      const button = el("button", { type: "button", text: action, "data-action": action });
      button.addEventListener("click", () => this.act(action, name));
      cells.buttons[action] = button;
      buttons.append(button);
    }
    cells.actions.append(buttons);
    cells.row = el("tr", { "data-task": name });
    cells.row.append(cells.name, cells.state, cells.health, cells.pid, cells.port, cells.uptime,
      cells.restarts, cells.exit, cells.actions);
    this.rows.set(name, cells);
    return cells;
  }

  fillRow(task, cells) {
    cells.row.dataset.state = task.state;
    cells.row.classList.toggle("selected", task.name === this.selected);
    const failed = task.state === "exited" && badExit(task.exit_code, task.exit_signal);
    const badge = el("span", { class: `badge state-${task.state}${failed ? " bad" : ""}`, text: task.state });
    cells.state.replaceChildren(badge);
    cells.state.title = task.error || (task.manually_stopped ? "stopped by hand" : "");
    const health = task.checked || task.health !== "unknown" ? task.health : "—";
    cells.health.replaceChildren(el("span", { class: `health-${task.health}`, text: health }));
    cells.pid.textContent = task.pid ?? "—";
    if (task.port) {
      const url = taskUrl(task.port);
      const link = el("a", { href: url, text: String(task.port), target: "_blank" });
      link.rel = "noopener noreferrer";
      link.title = task.url ? `${url} (health: ${task.url})` : url;
      cells.port.replaceChildren(link);
    } else {
      cells.port.textContent = "—";
    }
    cells.restarts.textContent = String(task.restarts);
    cells.exit.textContent = lastExit(task);
    cells.exit.title = task.error || "";
    this.fillUptime(task.name);
    const running = this.busy.get(task.name);
    for (const [action, button] of Object.entries(cells.buttons)) {
      const pointless = action === "start" ? LIVE.has(task.state) : action !== "restart" && task.state === "stopped";
      button.disabled = Boolean(running) || pointless;
      button.classList.toggle("running", running === action);
    }
  }

  fillUptime(name) {
    const known = this.tasks.get(name);
    const cells = this.rows.get(name);
    if (!known || !cells) return;
    const { status, received } = known;
    cells.uptime.textContent =
      status.uptime_s === null || status.uptime_s === undefined
        ? "—"
        : duration(status.uptime_s + (performance.now() - received) / 1000);
  }

  tick() {
    for (const name of this.tasks.keys()) this.fillUptime(name);
  }

  fillSelect(tasks) {
    const names = tasks.map((task) => task.name);
    const select = $("log-task");
    const current = [...select.options].map((option) => option.value);
    if (current.join("\n") !== names.join("\n")) {
      select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    }
    if (!this.selected || !names.includes(this.selected)) {
      const first = tasks.find((task) => task.pid) || tasks[0]; // a running task's log first
      if (first) this.select(first.name);
    } else {
      select.value = this.selected;
    }
  }

  // -------------------------------------------------------------- actions

  async act(action, name) {
    const question = `Kill ${name}? Every process of the task gets SIGKILL and its window is closed.`;
    if (action === "kill" && !confirm(question)) return;
    this.busy.set(name, action);
    const known = this.tasks.get(name);
    if (known) this.fillRow(known.status, this.rows.get(name));
    $("activity").textContent = `${name}: ${action}…`;
    try {
      const result = await this.bridge.call(action, { tasks: [name] });
      const own = (result.tasks || []).find((task) => task.name === name); // not its dependencies
      $("activity").textContent = own
        ? `${name}: ${own.action.replaceAll("_", " ")}, ${own.state}`
        : result.message || `${name}: ${action} done`;
      for (const task of result.tasks || []) {
        if (task.ok) continue;
        const why = task.blocked_by ? `blocked by ${task.blocked_by}` : task.error || task.action;
        const tail = [task.check_output, ...(task.log_tail || [])].filter(Boolean).join("\n");
        showError(`${action} ${task.name}: ${why} (${task.state})`, tail);
      }
      for (const warning of result.warnings || []) showError(`${action} ${name}: ${warning}`);
    } catch (error) {
      $("activity").textContent = "";
      showError(`${action} ${name}: ${rpcMessage(error)}`);
    } finally {
      this.busy.delete(name);
      this.refreshStatus();
    }
  }

  // -------------------------------------------------------------- log pane

  select(name) {
    if (name === this.selected) return;
    this.selected = name;
    $("log-task").value = name;
    for (const [task, cells] of this.rows) cells.row.classList.toggle("selected", task === name);
    $("log").replaceChildren();
    this.pendingLines = [];
    this.follow(name);
  }

  async follow(name) {
    $("log").replaceChildren();
    this.pendingLines = [];
    const { id, done } = this.bridge.request("follow", { tasks: [name], lines: LOG_HISTORY });
    this.followId = id; // lines before its reply belong to the follow it replaced
    try {
      await done;
    } catch (error) {
      report(`log of ${name}`, error);
    } finally {
      if (this.followId === id) this.followId = null;
    }
  }

  atEnd() {
    const log = $("log");
    return log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  }

  queueLine(line) {
    this.pendingLines.push(line);
    if (!this.drawScheduled) {
      this.drawScheduled = true;
      requestAnimationFrame(() => this.drawLines());
    }
  }

  drawLines() {
    this.drawScheduled = false;
    const log = $("log");
    const follow = this.atEnd();
    const lines = this.pendingLines.splice(0).slice(-MAX_LOG_LINES);
    const batch = document.createDocumentFragment();
    for (const line of lines) {
      const row = el("div", { class: "line" });
      row.append(el("span", { class: "time", text: clock(line.time) }), el("span", { text: line.text }));
      batch.append(row);
    }
    log.append(batch);
    let extra = log.childElementCount - MAX_LOG_LINES;
    while (extra-- > 0) log.firstElementChild.remove();
    if (follow) log.scrollTop = log.scrollHeight;
    $("log-end").hidden = follow || this.atEnd();
  }

  // -------------------------------------------------------------- events

  addEvent(event) {
    const key = `${event.time}|${event.type}|${event.task}|${JSON.stringify(event.details)}`;
    if (this.seenEvents.has(key)) return; // history asked again after a reconnection
    this.seenEvents.add(key);
    const row = el("tr", { "data-type": event.type });
    row.key = key;
    const bad = event.type === "exited" && badExit(event.details?.exit_code, event.details?.signal);
    const time = el("td", { class: "time", text: clock(event.time), "data-label": "time" });
    time.title = event.time;
    row.append(
      time,
      el("td", { text: event.task || "—", "data-label": "task" }),
      el("td", { text: event.type, class: `event-${event.type}${bad ? " bad" : ""}`, "data-label": "type" }),
      el("td", { text: event.cause, "data-label": "cause" }),
      el("td", { text: details(event.details), class: "details", "data-label": "details" }),
    );
    const body = $("events").tBodies[0]; // newest first
    const older = [...body.rows].find((other) => other.cells[0].title < event.time);
    body.insertBefore(row, older || null);
    while (body.rows.length > MAX_EVENTS) {
      this.seenEvents.delete(body.lastChild.key);
      body.lastChild.remove();
    }
  }
}

window.addEventListener("DOMContentLoaded", () => {
  window.taskmuxDashboard = new Dashboard();
});
