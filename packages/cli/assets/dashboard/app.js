// The outbox dashboard page: plain DOM, no framework, no build step. Every value from the store
// reaches the page through textContent, never parsed as markup, so an entry's HTML renders as text.
/* global uPlot */
(() => {
  const $ = (selector) => document.querySelector(selector);
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.getAttribute("content") ?? "";
  const csrf = meta("outbox-csrf");
  const intervalMs = Number(meta("outbox-interval-ms")) || 2000;
  const pageSize = 50;
  let readOnly = document.documentElement.dataset.readOnly === "true";

  // ---- helpers -------------------------------------------------------------------------------
  function el(tag, text, attributes = {}) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    return node;
  }

  function formatAge(seconds) {
    if (!seconds) return "0 s";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
    const hours = Math.floor(minutes / 60);
    return hours < 48 ? `${hours} h ${minutes % 60} min` : `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  const cut = (text, max) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

  async function getJson(path) {
    const response = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error?.message ?? `HTTP ${response.status}`);
    return body;
  }

  async function postJson(path, value) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-outbox-csrf": csrf },
      body: JSON.stringify(value),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error?.message ?? `HTTP ${response.status}`);
    return body;
  }

  function showResult(text, isError = false) {
    const result = $("#result");
    result.textContent = text;
    result.classList.toggle("error", isError);
  }

  /** A modal confirmation; resolves true only when the operator clicks Confirm. */
  function confirmAction(text) {
    const dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    return new Promise((resolve) => {
      const done = (answer) => {
        $("#confirm-ok").onclick = null;
        $("#confirm-cancel").onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $("#confirm-ok").onclick = () => done(true);
      $("#confirm-cancel").onclick = () => done(false);
      dialog.onclose = () => done(false);
      dialog.showModal();
    });
  }

  // ---- backlog and chart ---------------------------------------------------------------------
  let backlogChart;
  let throughputChart;

  function chartWidth() {
    return Math.max(280, $("#backlog-chart").clientWidth || document.body.clientWidth - 32);
  }

  function makeCharts(withThroughput) {
    if (typeof uPlot !== "function") return;
    const axisStroke = getComputedStyle(document.body).color;
    const axis = (extra = {}) => ({ stroke: axisStroke, grid: { stroke: "rgba(128,128,128,.2)" }, ...extra });
    backlogChart = new uPlot(
      {
        title: "Backlog and lag",
        width: chartWidth(),
        height: 220,
        scales: { x: { time: true }, n: {}, s: {} },
        axes: [axis(), axis({ scale: "n", label: "entries" }), axis({ scale: "s", side: 1, label: "lag (s)" })],
        series: [
          {},
          { label: "pending", scale: "n", stroke: "#0969da", width: 2 },
          { label: "in flight", scale: "n", stroke: "#8250df", width: 1 },
          { label: "dead", scale: "n", stroke: "#cf222e", width: 1 },
          { label: "lag (s)", scale: "s", stroke: "#bf8700", width: 2, dash: [6, 4] },
        ],
      },
      [[], [], [], [], []],
      $("#backlog-chart"),
    );
    if (withThroughput) {
      $("#throughput-chart").hidden = false;
      throughputChart = new uPlot(
        {
          title: "Throughput",
          width: chartWidth(),
          height: 180,
          scales: { x: { time: true } },
          axes: [axis(), axis({ label: "published/s" })],
          series: [{}, { label: "published/s", stroke: "#1a7f37", width: 2 }],
        },
        [[], []],
        $("#throughput-chart"),
      );
    }
    window.addEventListener("resize", () => {
      backlogChart?.setSize({ width: chartWidth(), height: 220 });
      throughputChart?.setSize({ width: chartWidth(), height: 180 });
    });
  }

  function drawCharts(history) {
    const t = history.map((sample) => sample.t);
    backlogChart?.setData([
      t,
      history.map((sample) => sample.pending),
      history.map((sample) => sample.inFlight),
      history.map((sample) => sample.dead),
      history.map((sample) => sample.lagSeconds),
    ]);
    throughputChart?.setData([t, history.map((sample) => sample.publishedPerSecond)]);
  }

  let stateUpdates = 0;
  let chartsMade = false;

  async function refreshState() {
    try {
      const state = await getJson("api/state");
      readOnly = state.readOnly;
      document.documentElement.dataset.readOnly = String(state.readOnly);
      document.documentElement.dataset.canDrop = String(state.canDrop);
      $("#mode").hidden = !state.readOnly;
      $('[data-stat="pending"]').textContent = String(state.stats.pending);
      $('[data-stat="inFlight"]').textContent = String(state.stats.inFlight);
      $('[data-stat="dead"]').textContent = String(state.stats.dead);
      const lag = $('[data-stat="lag"]');
      lag.textContent = state.stats.oldestPendingAt ? formatAge(state.stats.lagSeconds) : "– (nothing pending)";
      lag.dataset.seconds = String(state.stats.lagSeconds);
      renderCapture(state.stats.capture);
      renderPending(state.pending);
      renderRelays(state.relays, state.throughput !== null, state.storeRelays);
      $("#updated").textContent = `updated ${new Date(state.at).toLocaleTimeString()}`;
      $("#state-error").hidden = true;
      if (!chartsMade) {
        chartsMade = true;
        makeCharts(state.throughput !== null);
        $("#chart-note").textContent =
          state.throughput === null
            ? "Throughput needs running relays: start the dashboard with --relay <url>."
            : "Throughput: the relays' published counters (/readyz).";
      }
      drawCharts(state.history);
      stateUpdates += 1;
      document.body.dataset.stateUpdates = String(stateUpdates);
    } catch (error) {
      const box = $("#state-error");
      box.textContent = `Cannot read the outbox: ${error.message}`;
      box.hidden = false;
    }
  }

  /** Log-capture stores only: the slot, how far behind the log, how much WAL it keeps. */
  function renderCapture(capture) {
    $("[data-capture]").hidden = !capture;
    if (!capture) return;
    const where = `${capture.source} (${capture.state}${capture.active ? "" : ", no consumer"})`;
    $('[data-stat="capture"]').textContent =
      capture.lagBytes === null
        ? `${where}: missing, entries since are in the table only`
        : `${where}: ${formatBytes(capture.lagBytes)} behind, ${formatBytes(capture.retainedBytes)} WAL retained`;
  }

  function formatBytes(bytes) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[unit]}`;
  }

  /** Retry-waiting count and hot keys: from the store's pendingSummary() (null: the store has none). */
  function renderPending(pending) {
    const waiting = $('[data-stat="retryWaiting"]');
    const body = $("#hot-keys tbody");
    body.replaceChildren();
    if (pending === null) {
      waiting.textContent = "n/a";
      $("#hot-note").textContent =
        "This store has no pendingSummary(): retry-waiting entries and hot keys are not available.";
      $("#blocked-note").textContent = "This store has no pendingSummary(): blocked keys are not available.";
      $("#blocked-keys tbody").replaceChildren();
      return;
    }
    const scope = pending.complete
      ? `all ${pending.scanned} pending entries`
      : `the oldest ${pending.scanned} pending entries`;
    waiting.textContent = pending.complete ? String(pending.retryWaiting) : `${pending.retryWaiting}+`;
    waiting.dataset.value = String(pending.retryWaiting);
    waiting.title = `among ${scope}`;
    $("#hot-note").textContent = `The keys holding the most pending entries, among ${scope}.`;
    for (const hot of pending.hotKeys) {
      const row = el("tr", null, { "data-key": hot.key });
      row.append(el("td", hot.key), el("td", hot.pending, { "data-pending": String(hot.pending) }));
      body.append(row);
    }
    if (pending.hotKeys.length === 0) {
      const row = el("tr");
      row.append(el("td", "No keyed entry pending.", { colspan: "2" }));
      body.append(row);
    }
    renderBlocked(pending.blockedKeys, scope);
  }

  /** Keys whose first pending entry failed and waits for its retry: everything behind it waits too. */
  function renderBlocked(blockedKeys, scope) {
    const body = $("#blocked-keys tbody");
    body.replaceChildren();
    $("#blocked-note").textContent = `Keys whose first pending entry failed and waits for its retry, among ${scope}.`;
    for (const blocked of blockedKeys) {
      const row = el("tr", null, { "data-key": blocked.key });
      row.append(
        el("td", blocked.key),
        el("td", blocked.pending, { "data-pending": String(blocked.pending) }),
        el("td", blocked.entryId),
        el("td", blocked.attempts),
        el("td", new Date(blocked.availableAt).toLocaleString()),
        el("td", blocked.lastError ?? "–", { class: "error" }),
      );
      body.append(row);
    }
    if (blockedKeys.length === 0) {
      const row = el("tr");
      row.append(el("td", "No key is blocked behind a failing entry.", { colspan: "6" }));
      body.append(row);
    }
  }

  /** What each relay given with --relay said on its /readyz at the last sample, then the store's view. */
  function renderRelays(relays, asked, storeRelays) {
    const body = $("#relays tbody");
    body.replaceChildren();
    $("#relays").hidden = !asked;
    $("#relays-note").textContent = asked
      ? "From each relay's /readyz, at the last sample."
      : storeRelays
        ? "No --relay given: the relays as the store sees them. Start the dashboard with --relay <url> (each relay's HTTP port) for each relay's own view."
        : "Start the dashboard with --relay <url> (each relay's HTTP port) to see who leads, its fencing token and its last errors.";
    renderStoreRelays(storeRelays);
    const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");
    for (const relay of relays) {
      const row = el("tr", null, { "data-relay": relay.url });
      if (!relay.reachable) {
        row.append(el("td", relay.url), el("td", "unreachable", { colspan: "6", class: "error" }));
      } else {
        const ready = relay.ready ? "yes" : `no (${relay.reasons.join(", ")})`;
        const leader = relay.leaderElection ? (relay.leader ? "yes" : "standing by") : "n/a (no election)";
        const fence = relay.fence ? `${relay.fence.lock} #${relay.fence.token}` : "–";
        const error = relay.lastPublishError ? `${relay.lastPublishError} (${time(relay.lastPublishFailureAt)})` : "–";
        row.append(
          el("td", relay.relayId ? `${relay.relayId} (${relay.url})` : relay.url),
          el("td", ready, { "data-ready": String(relay.ready) }),
          el("td", leader, { "data-leader": String(relay.leader) }),
          el("td", fence, { "data-fence": relay.fence ? relay.fence.token : "" }),
          el("td", relay.published ?? "–", { "data-published": String(relay.published ?? "") }),
          el("td", time(relay.lastPublishedAt)),
          el("td", error, { class: relay.lastPublishError ? "error" : "" }),
        );
      }
      body.append(row);
    }
  }

  /** A row of one cell spanning the table: what an empty table says. */
  function emptyRow(text, columns) {
    const row = el("tr");
    row.append(el("td", text, { colspan: String(columns) }));
    return row;
  }

  /** The relays as the store sees them (its relayActivity()): null when the store has none. */
  function renderStoreRelays(view) {
    $("#store-relays").hidden = !view;
    if (!view) return;
    const scope = view.complete ? `all ${view.scanned} pending entries` : `the oldest ${view.scanned} pending entries`;
    $("#store-relays-note").textContent =
      `The newest fencing token the store recorded per lock, and the relays holding leases among ${scope}.`;
    $("#store-last-publish").textContent = view.lastPublishedAt
      ? new Date(view.lastPublishedAt).toLocaleString()
      : "none among the newest settled entries";
    const fences = $("#store-fences tbody");
    fences.replaceChildren();
    for (const fence of view.fences) {
      const row = el("tr", null, { "data-lock": fence.lock });
      row.append(el("td", fence.lock), el("td", fence.token, { "data-token": fence.token }));
      fences.append(row);
    }
    if (view.fences.length === 0) fences.append(emptyRow("No fencing token recorded (no leader election).", 2));
    const claimers = $("#store-claimers tbody");
    claimers.replaceChildren();
    for (const claimer of view.claimers) {
      const row = el("tr", null, { "data-relay": claimer.relay });
      row.append(
        el("td", claimer.relay),
        el("td", claimer.inFlight, { "data-in-flight": String(claimer.inFlight) }),
        el("td", new Date(claimer.leaseUntil).toLocaleString()),
      );
      claimers.append(row);
    }
    if (view.claimers.length === 0) claimers.append(emptyRow("No relay holds a lease now.", 3));
    const errors = $("#recent-errors tbody");
    errors.replaceChildren();
    for (const error of view.recentErrors) {
      const row = el("tr", null, { "data-id": error.id });
      row.append(
        el("td", error.id),
        el("td", error.topic),
        el("td", error.key ?? "–"),
        el("td", error.attempts),
        el("td", error.dead ? "dead" : "retry due"),
        el("td", new Date(error.at).toLocaleString()),
        el("td", cut(error.error, 160), { class: "error-text" }),
      );
      errors.append(row);
    }
    if (view.recentErrors.length === 0) errors.append(emptyRow("No recent errors.", 7));
  }

  function pollState() {
    refreshState().finally(() => setTimeout(pollState, intervalMs));
  }

  // ---- dead letters --------------------------------------------------------------------------
  let entries = [];
  let cursor = null; // the `after` of the page shown (null: first page)
  let next = null;
  let pageNumber = 1;
  let filteredBy = null; // "store", or "dashboard" for a store that does not filter itself
  // The filters applied (the server filters every page; the fields apply on submit): query parameters.
  let filters = {};
  const selected = new Set();

  function readFilters() {
    const keyless = $("#filter-keyless").checked;
    const read = {
      topic: $("#filter-topic").value,
      key: keyless ? "" : $("#filter-key").value,
      keyless: keyless ? "1" : "",
      error: $("#filter-error").value,
    };
    return Object.fromEntries(Object.entries(read).filter(([, value]) => value !== ""));
  }

  function renderDead() {
    const filtered = Object.keys(filters).length > 0;
    const body = $("#dead tbody");
    body.replaceChildren();
    for (const entry of entries) {
      const row = el("tr", null, { "data-id": entry.id });
      if (!readOnly) {
        const pick = el("td", null, { "data-action": "" });
        const box = el("input", null, { type: "checkbox", "aria-label": `Select ${entry.id}` });
        box.checked = selected.has(entry.id);
        box.addEventListener("click", (event) => event.stopPropagation());
        box.addEventListener("change", () => {
          if (box.checked) selected.add(entry.id);
          else selected.delete(entry.id);
          updateSelection();
        });
        pick.append(box);
        row.append(pick);
      }
      row.append(
        el("td", entry.id),
        el("td", entry.topic),
        el("td", entry.key ?? "–"),
        el("td", entry.attempts),
        el("td", new Date(entry.createdAt).toLocaleString()),
        el("td", cut(entry.lastError ?? "–", 160), { class: "error-text" }),
      );
      row.addEventListener("click", () => void showDetail(entry.id));
      body.append(row);
    }
    if (entries.length === 0) {
      const row = el("tr");
      const message = filtered ? "No dead entry matches the filters." : "No dead entries.";
      row.append(el("td", message, { colspan: readOnly ? "6" : "7" }));
      body.append(row);
    }
    $("#page-info").textContent =
      `page ${pageNumber}: ${entries.length} ${filtered ? "matching " : ""}${entries.length === 1 ? "entry" : "entries"}` +
      (filteredBy === "dashboard" ? " (this store does not filter: the dashboard read on to find them)" : "");
    $("#first-page").disabled = cursor === null;
    $("#next-page").disabled = next === null;
    updateSelection();
  }

  function updateSelection() {
    if (readOnly) return;
    const none = selected.size === 0;
    $("#requeue-selected").disabled = none;
    $("#drop-selected").disabled = none;
    $("#requeue-selected").textContent = none ? "Requeue selected" : `Requeue selected (${selected.size})`;
    $("#drop-selected").textContent = none ? "Drop selected" : `Drop selected (${selected.size})`;
  }

  async function loadDead(after) {
    const query = new URLSearchParams({ limit: String(pageSize), ...filters });
    if (after) query.set("after", after);
    try {
      const page = await getJson(`api/dead?${query}`);
      entries = page.entries;
      next = page.next;
      filteredBy = page.filteredBy ?? null;
      cursor = after ?? null;
      for (const id of [...selected]) if (!entries.some((entry) => entry.id === id)) selected.delete(id);
      renderDead();
      document.body.dataset.deadLoaded = String(Number(document.body.dataset.deadLoaded ?? 0) + 1);
    } catch (error) {
      showResult(`Cannot list dead entries: ${error.message}`, true);
    }
  }

  // ---- detail --------------------------------------------------------------------------------
  let detailId = null;

  async function showDetail(id) {
    let entry;
    try {
      entry = await getJson(`api/dead/${encodeURIComponent(id)}`);
    } catch (error) {
      showResult(`Cannot show ${id}: ${error.message}`, true);
      return;
    }
    detailId = id;
    $("#detail-id").textContent = entry.id;
    const fields = $("#detail-fields");
    fields.replaceChildren();
    const rows = [
      ["topic", entry.topic],
      ["key", entry.key ?? "–"],
      ["attempts", entry.attempts],
      ["created", entry.createdAt],
      ["available", entry.availableAt],
      ["idempotency key", entry.idempotencyKey ?? "–"],
      ["last error", entry.lastError ?? "–"],
      ["headers", JSON.stringify(entry.headers ?? {})],
      ["payload size", `${entry.payloadBytes} bytes`],
    ];
    for (const [name, value] of rows) fields.append(el("dt", name), el("dd", value));
    const isText = entry.payloadText !== null;
    $("#payload").textContent = isText ? entry.payloadText : entry.payloadBase64;
    const shownBytes = isText
      ? new TextEncoder().encode(entry.payloadText).byteLength
      : atob(entry.payloadBase64).length;
    $("#payload-note").textContent = [
      isText ? "" : "Not UTF-8 text: shown as base64.",
      entry.payloadTruncated ? `Truncated: the first ${shownBytes} of ${entry.payloadBytes} bytes.` : "",
    ]
      .filter(Boolean)
      .join(" ");
    $("#download").setAttribute("href", `api/dead/${encodeURIComponent(entry.id)}/payload`);
    $("#detail").hidden = false;
    $("#detail").scrollIntoView({ block: "nearest" });
  }

  // ---- actions -------------------------------------------------------------------------------
  async function act(verb, ids) {
    if (readOnly || ids.length === 0) return;
    const many = ids.length === 1 ? `dead entry ${ids[0]}` : `${ids.length} dead entries`;
    const question =
      verb === "requeue"
        ? `Requeue ${many}? They become pending again and the relay publishes them.`
        : `Drop ${many} for good? This cannot be undone.`;
    if (!(await confirmAction(question))) {
      showResult(`${verb === "requeue" ? "Requeue" : "Drop"} cancelled.`);
      return;
    }
    try {
      const result = await postJson(`api/dead/${verb}`, { ids });
      const done = verb === "requeue" ? result.requeued : result.dropped;
      showResult(
        `${verb === "requeue" ? "Requeued" : "Dropped"} ${done} of ${result.selected} selected` +
          (done < result.selected ? " (the others were no longer dead)." : "."),
      );
      for (const id of ids) selected.delete(id);
      if (detailId !== null && ids.includes(detailId)) {
        $("#detail").hidden = true;
        detailId = null;
      }
    } catch (error) {
      showResult(`${verb === "requeue" ? "Requeue" : "Drop"} failed: ${error.message}`, true);
    }
    await Promise.all([loadDead(cursor), refreshState()]);
  }

  // ---- wiring --------------------------------------------------------------------------------
  $("#dead-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    filters = readFilters();
    pageNumber = 1;
    void loadDead(null);
  });
  $("#filter-clear").addEventListener("click", () => {
    $("#dead-filter").reset();
    $("#filter-key").disabled = false;
    filters = {};
    pageNumber = 1;
    void loadDead(null);
  });
  $("#filter-keyless").addEventListener("change", (event) => {
    $("#filter-key").disabled = event.target.checked;
  });
  $("#select-all").addEventListener("change", (event) => {
    for (const entry of entries) {
      if (event.target.checked) selected.add(entry.id);
      else selected.delete(entry.id);
    }
    renderDead();
  });
  $("#requeue-selected").addEventListener("click", () => void act("requeue", [...selected]));
  $("#drop-selected").addEventListener("click", () => void act("drop", [...selected]));
  $("#detail-requeue").addEventListener("click", () => detailId && void act("requeue", [detailId]));
  $("#detail-drop").addEventListener("click", () => detailId && void act("drop", [detailId]));
  $("#detail-close").addEventListener("click", () => {
    $("#detail").hidden = true;
    detailId = null;
  });
  $("#first-page").addEventListener("click", () => {
    pageNumber = 1;
    void loadDead(null);
  });
  $("#next-page").addEventListener("click", () => {
    if (next === null) return;
    pageNumber += 1;
    void loadDead(next);
  });
  if (readOnly) for (const node of document.querySelectorAll("[data-action]")) node.remove();

  pollState();
  void loadDead(null);
})();
