/* tracker dashboard: reads the public query API and the live stream; no framework, no build. */
"use strict";
(function () {
  const BASE = document.querySelector('meta[name="tracker-base"]').content;
  const AUTH = document.querySelector('meta[name="tracker-auth"]').content;
  const LIVE_CAP = 200;      // rows kept in the in-progress list
  const ENDED_PAGE = 50;     // ended calls per page
  const ENDED_CAP = 200;     // rows kept in the ended list
  const FLUSH_MS = 400;      // live updates are applied at most this often, in one DOM pass
  const REFETCH_OVER = 40;   // more changed calls than this in one flush: reload the lists
  const STATS_MS = 5000;     // counts and chart refresh at most this often while events arrive
  const RANGES = { "15m": 900e3, "1h": 3600e3, "6h": 21600e3, "24h": 86400e3, "7d": 604800e3 };
  const OUTCOME_COLORS = {
    normal: "#15803d", busy: "#b45309", no_answer: "#7c3aed", cancelled: "#64748b",
    rejected: "#be123c", failed: "#dc2626", error: "#111827", in_progress: "#2563eb",
  };
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------
  // The API

  class ApiError extends Error {
    constructor(status, code, detail) { super(detail); this.status = status; this.code = code; }
  }

  async function api(path) {
    let res;
    try {
      res = await fetch(BASE + path, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "unreachable", "the tracker is not reachable");
    }
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      throw new ApiError(res.status, body && body.error, (body && body.detail) || res.statusText);
    }
    return body;
  }

  const enc = encodeURIComponent;
  const query = (params) => {
    const parts = [];
    for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) parts.push(enc(k) + "=" + enc(v));
    return parts.length ? "?" + parts.join("&") : "";
  };

  // ---------------------------------------------------------------------------------------
  // Formatting

  const fmtTime = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "").replace("Z", "") : "—");
  const shortTime = (iso) => (iso ? iso.slice(11, 19) : "—");
  function fmtSecs(s) {
    if (s == null) return "—";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60), r = Math.round(s - m * 60);
    if (m < 60) return m + " m " + String(r).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " m";
  }
  const fmtNum = (n) => (n == null ? "—" : n.toLocaleString("en-US"));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) {
      if (v == null) continue;
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  const badge = (value) => el("span", { class: "badge b-" + value, text: value });
  const callHref = (id) => BASE + "/ui/calls/" + enc(id);

  // ---------------------------------------------------------------------------------------
  // Status line and banner

  let bannerTimer = null;
  function banner(kind, text, hideAfter) {
    const b = $("banner");
    clearTimeout(bannerTimer);
    if (!text) { b.hidden = true; return; }
    b.className = "banner " + kind; b.textContent = text; b.hidden = false;
    if (hideAfter) bannerTimer = setTimeout(() => { b.hidden = true; }, hideAfter);
  }
  function pill(kind, text) { const p = $("live"); p.className = "pill " + kind; p.textContent = text; }

  // ---------------------------------------------------------------------------------------
  // The live stream (EventSource resumes by itself with Last-Event-ID after a drop)

  function openStream(after, onEvents, onState) {
    let source = null, lastSeq = after, dropped = false, pending = [], timer = null;
    const flush = () => { timer = null; const batch = pending; pending = []; onEvents(batch); };
    function connect() {
      source = new EventSource(BASE + "/events/stream?after=" + lastSeq);
      source.addEventListener("open", () => { onState(dropped ? "resumed" : "live"); dropped = false; });
      source.addEventListener("callback", (ev) => {
        lastSeq = Math.max(lastSeq, Number(ev.lastEventId) || 0);
        try { pending.push(JSON.parse(ev.data)); } catch (e) { return; }
        if (!timer) timer = setTimeout(flush, FLUSH_MS);
      });
      source.addEventListener("error", () => {
        dropped = true;
        if (source.readyState === EventSource.CLOSED) {  // refused outright: start again later
          onState("down"); setTimeout(connect, 3000);
        } else onState("retrying");
      });
    }
    connect();
    return { get lastSeq() { return lastSeq; } };
  }

  function streamState(state) {
    if (state === "live") { pill("live", "live"); }
    else if (state === "resumed") {
      pill("live", "live");
      banner("ok", "Live updates resumed: the events missed meanwhile were caught up.", 6000);
      onResume();
    } else if (state === "retrying") {
      pill("wait", "reconnecting…");
      banner("warn", "Live updates dropped (the tracker is not answering); reconnecting…");
    } else { pill("down", "offline"); banner("bad", "Live updates stopped; retrying in a few seconds."); }
  }
  let onResume = () => {};

  // ---------------------------------------------------------------------------------------
  // Filters, kept in the URL

  const FILTERS = ["status", "outcome", "cause", "direction", "number", "range", "since", "until"];
  function readFilters() {
    const p = new URLSearchParams(location.search), f = {};
    for (const k of FILTERS) f[k] = (p.get(k) || "").trim();
    if (!f.range) f.range = f.since || f.until ? "custom" : "24h";
    return f;
  }
  function writeFilters(f, push) {
    const kept = {};
    for (const k of FILTERS) if (f[k] && !(k === "range" && f[k] === "24h")) kept[k] = f[k];
    if (f.range !== "custom") { delete kept.since; delete kept.until; }
    const url = location.pathname + query(kept);
    if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
  }
  function timeBounds(f) {
    if (f.range === "custom") return { since: f.since ? f.since + "Z" : "", until: f.until ? f.until + "Z" : "" };
    if (f.range === "all" || !RANGES[f.range]) return { since: "", until: "" };
    return { since: new Date(Date.now() - RANGES[f.range]).toISOString(), until: "" };
  }
  function isoLocal(iso) {  // "2024-01-01T10:00:00Z" -> the datetime-local value (UTC)
    return iso ? iso.replace(/Z$/, "").replace(/\.\d+$/, "").slice(0, 19) : "";
  }

  // ---------------------------------------------------------------------------------------
  // The dashboard

  function dashboard() {
    $("dashboard").hidden = false;
    const form = $("filters");
    let f = readFilters(), stream = null;
    const live = new Map(), ended = new Map();
    let endedCursor = null, statsDirty = false, statsTimer = null;

    function fillForm() {
      for (const k of ["status", "outcome", "cause", "direction", "number", "range"]) form.elements[k].value = f[k];
      if (form.elements.range.value !== f.range) form.elements.range.value = "24h";
      form.elements.since.value = isoLocal(f.since);
      form.elements.until.value = isoLocal(f.until);
      $("custom-range").hidden = f.range !== "custom";
    }
    function fromForm() {
      const g = {};
      for (const k of FILTERS) g[k] = (form.elements[k].value || "").trim();
      if (g.range !== "custom") { g.since = ""; g.until = ""; }
      return g;
    }
    form.elements.range.addEventListener("change", () => {
      $("custom-range").hidden = form.elements.range.value !== "custom";
    });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault(); f = fromForm(); writeFilters(f, true); reload();
    });
    $("clear").addEventListener("click", () => {
      for (const k of FILTERS) f[k] = "";
      f.range = "24h";
      fillForm(); writeFilters(f, true); reload();
    });
    window.addEventListener("popstate", () => { f = readFilters(); fillForm(); reload(); });
    $("search").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const q = $("q").value.trim();
      if (!q) return;
      $("search-result").textContent = "Searching…";
      try {
        await api("/calls/" + enc(q));
        location.assign(callHref(q));
        return;
      } catch (err) {
        if (err.status !== 404) { $("search-result").textContent = err.message; return; }
      }
      $("search-result").textContent = "No call with that id: showing calls from or to " + q + ".";
      f.number = q; fillForm(); writeFilters(f, true); reload();
    });
    $("more").addEventListener("click", () => loadEnded(true));

    // -- what the filters select
    const bounds = () => timeBounds(f);
    function matches(c) {
      if (f.status && c.status !== f.status) return false;
      if (f.outcome && c.outcome !== f.outcome) return false;
      if (f.cause && c.cause !== f.cause) return false;
      if (f.direction && c.direction !== f.direction) return false;
      if (f.number && c.from !== f.number && c.to !== f.number) return false;
      const b = bounds();
      if (b.since && (!c.firstEventAt || Date.parse(c.firstEventAt) < Date.parse(b.since))) return false;
      if (b.until && (!c.firstEventAt || Date.parse(c.firstEventAt) >= Date.parse(b.until))) return false;
      return true;
    }
    const showLive = () => !f.outcome && !f.cause && f.status !== "ended";
    const showEnded = () => !f.status || f.status === "ended";

    // /calls with the filters; a number is looked up as the caller and as the called
    async function listCalls(extra, limit, cursor) {
      const b = bounds();
      const base = { status: f.status, outcome: f.outcome, cause: f.cause, direction: f.direction,
        since: b.since, until: b.until, limit: limit, cursor: cursor, ...extra };
      if (!f.number) return api("/calls" + query(base));
      const [a, c] = await Promise.all([
        api("/calls" + query({ ...base, from: f.number })), api("/calls" + query({ ...base, to: f.number })),
      ]);
      const seen = new Map();
      for (const v of [...a.calls, ...c.calls]) seen.set(v.callId, v);
      const calls = [...seen.values()].sort((x, y) => y.lastSeq - x.lastSeq).slice(0, limit);
      return { calls: calls, next: null };
    }

    async function loadLive() {
      live.clear();
      if (showLive()) {
        const wanted = f.status ? [f.status] : ["started", "answered"];
        const pages = await Promise.all(wanted.map((s) => listCalls({ status: s }, LIVE_CAP)));
        for (const p of pages) for (const c of p.calls) live.set(c.callId, c);
      }
      renderLive(new Set());
    }
    async function loadEnded(more) {
      if (!more) { ended.clear(); endedCursor = null; }
      if (showEnded()) {
        const p = await listCalls({ status: "ended" }, ENDED_PAGE, more ? endedCursor : null);
        for (const c of p.calls) ended.set(c.callId, c);
        endedCursor = p.next;
      }
      renderEnded(new Set());
    }

    async function loadStats() {
      const b = bounds();
      const [stats, series] = await Promise.all([
        api("/stats" + query({ since: b.since, until: b.until })),
        // a preset range is exactly its length, so 24 hours are 1,440 one-minute buckets
        api("/stats/series" + query({ since: b.since,
          until: b.until || (RANGES[f.range] ? new Date(Date.parse(b.since) + RANGES[f.range]).toISOString() : "") })),
      ]);
      renderStats(stats);
      renderChart(series);
    }
    function scheduleStats() {
      statsDirty = true;
      if (statsTimer) return;
      statsTimer = setTimeout(() => {
        statsTimer = null;
        if (!statsDirty) return;
        statsDirty = false;
        loadStats().catch(() => {});
      }, STATS_MS);
    }

    // -- rendering (each list is rebuilt in one pass, capped)
    function callCell(c) {
      return el("td", { class: "id mono" }, el("a", { href: callHref(c.callId), title: c.callId, text: c.callId }));
    }
    function liveRow(c) {
      return el("tr", null, callCell(c), el("td", null, badge(c.status)),
        el("td", { class: "wide mono", text: c.from || "—" }), el("td", { class: "wide mono", text: c.to || "—" }),
        el("td", { text: shortTime(c.startedAt || c.firstEventAt), title: c.startedAt || "" }),
        el("td", { text: (c.lastEventType || "") + " " + shortTime(c.lastEventAt) }));
    }
    function endedRow(c) {
      return el("tr", null, callCell(c), el("td", null, badge(c.outcome || "—")),
        el("td", { class: "mono", text: c.cause || "—" }),
        el("td", { class: "wide mono", text: c.from || "—" }), el("td", { class: "wide mono", text: c.to || "—" }),
        el("td", { text: fmtTime(c.endedAt) }),
        el("td", { class: "num", text: fmtSecs(c.ringSeconds) }), el("td", { class: "num", text: fmtSecs(c.talkSeconds) }),
        el("td", { class: "num wide", text: fmtSecs(c.durationSeconds) }));
    }
    // Rows are kept per call and rebuilt only when the call changed; one replaceChildren a list.
    const rowCache = { "live-table": new Map(), "ended-table": new Map() };
    function renderList(map, cap, tableId, rowOf, fresh) {
      const rows = [...map.values()].sort((a, b) => b.lastSeq - a.lastSeq);
      for (const c of rows.slice(cap)) map.delete(c.callId);
      const cache = rowCache[tableId], next = new Map();
      const trs = rows.slice(0, cap).map((c) => {
        const hit = cache.get(c.callId);
        let tr;
        if (hit && hit.seq === c.lastSeq) { tr = hit.tr; tr.className = ""; }
        else { tr = rowOf(c); if (fresh.has(c.callId)) tr.className = "fresh"; }
        next.set(c.callId, { seq: c.lastSeq, tr: tr });
        return tr;
      });
      rowCache[tableId] = next;
      $(tableId).tBodies[0].replaceChildren(...trs);
      return trs.length;
    }
    function renderLive(fresh) {
      const n = renderList(live, LIVE_CAP, "live-table", liveRow, fresh);
      $("live-count").textContent = showLive() ? "(" + (n >= LIVE_CAP ? LIVE_CAP + "+" : n) + ")" : "";
      const empty = $("live-empty");
      empty.hidden = n > 0;
      empty.textContent = !showLive() ? "Calls in progress have no outcome or cause: hidden by these filters."
        : filtered() ? "No call in progress matches these filters." : "No call in progress.";
      $("live-table").hidden = n === 0;
    }
    function renderEnded(fresh) {
      const n = renderList(ended, ENDED_CAP, "ended-table", endedRow, fresh);
      $("ended-count").textContent = showEnded() ? "(" + n + ")" : "";
      const empty = $("ended-empty");
      empty.hidden = n > 0;
      empty.textContent = !showEnded() ? "Hidden by the status filter."
        : filtered() ? "No ended call matches these filters." : "No call has ended in this range.";
      $("ended-table").hidden = n === 0;
      $("more").hidden = !endedCursor || n >= ENDED_CAP;
    }
    const filtered = () => !!(f.status || f.outcome || f.cause || f.direction || f.number);

    function renderStats(s) {
      const k = s.kpis;
      const inProgress = (s.byStatus.started || 0) + (s.byStatus.answered || 0);
      const items = [
        ["Calls", fmtNum(s.total)], ["In progress", fmtNum(inProgress)], ["Ended", fmtNum(k.attempts)],
        ["Answered", fmtNum(k.answered)], ["ASR", k.asr == null ? "—" : (k.asr * 100).toFixed(1) + " %"],
        ["ACD", fmtSecs(k.acd)], ["Avg ring", fmtSecs(k.averageRingSeconds)],
      ];
      if (s.stale != null) items.push(["Stale", fmtNum(s.stale)]);
      $("kpis").replaceChildren(...items.map(([t, v]) => el("div", null, el("dt", { text: t }), el("dd", { text: v }))));
      countTable("by-outcome", s.byOutcome, "outcome");
      countTable("by-cause", s.byCause, "cause");
      $("causes").replaceChildren(...Object.keys(s.byCause).map((c) => el("option", { value: c })));
    }
    function countTable(id, counts, key) {
      const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
      const body = $(id).tBodies[0];
      if (!entries.length) { body.replaceChildren(el("tr", null, el("td", { class: "empty", text: "None in this range." }))); return; }
      body.replaceChildren(...entries.map(([name, n]) => {
        const b = el("button", { type: "button", text: name, title: "Show only " + key + " " + name });
        b.addEventListener("click", () => { f[key] = name; if (f.status && f.status !== "ended") f.status = ""; fillForm(); writeFilters(f, true); reload(); });
        return el("tr", null, el("td", null, b), el("td", { text: fmtNum(n) }));
      }));
    }

    let chart = null;
    function renderChart(s) {
      const box = $("chart");
      const step = s.stepSeconds;
      $("chart-step").textContent = step === 60 ? "minute" : step % 86400 === 0 ? (step / 86400) + " days".replace(/^1 days/, "day")
        : step % 3600 === 0 ? (step / 3600 === 1 ? "hour" : step / 3600 + " hours") : step / 60 + " minutes";
      const names = Object.keys(s.byOutcome);
      const total = names.reduce((n, k) => n + s.byOutcome[k].reduce((a, b) => a + b, 0), 0);
      $("chart-empty").hidden = total > 0;
      box.hidden = total === 0;
      const xs = s.times.map((t) => Date.parse(t) / 1000);
      const data = [xs, ...names.map((k) => s.byOutcome[k])];
      const key = names.join(",") + "/" + step;
      if (chart && chart.key === key && total > 0) { chart.setData(data); return; }
      if (chart) { chart.destroy(); chart = null; }
      if (total === 0 || typeof uPlot === "undefined") return;
      const opts = {
        width: Math.max(280, box.clientWidth), height: 240, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
        scales: { x: { time: true } },
        axes: [{}, { label: "calls", size: 50 }],
        series: [{ label: "time (UTC)" }, ...names.map((k) => ({
          label: k.replace("_", " "), stroke: OUTCOME_COLORS[k] || "#334155", width: 2,
          points: { show: xs.length < 80 },
        }))],
        legend: { live: true },
      };
      chart = new uPlot(opts, data, box);
      chart.key = key;
    }
    if (window.ResizeObserver) {
      new ResizeObserver(() => { if (chart) chart.setSize({ width: Math.max(280, $("chart").clientWidth), height: 240 }); })
        .observe($("chart"));
    }

    // -- live updates: changed calls are fetched and applied together
    async function onEvents(events) {
      if ($("banner").classList.contains("info")) banner("", "");
      const ids = new Set();
      for (const e of events) if (e.callId != null) ids.add(e.callId);
      if (!ids.size) return;
      scheduleStats();
      if (ids.size > REFETCH_OVER) { await Promise.all([loadLive(), loadEnded(false)]).catch(() => {}); return; }
      const views = await Promise.all([...ids].map((id) => api("/calls/" + enc(id)).catch(() => null)));
      let liveChanged = false, endedChanged = false;
      for (const c of views) {
        if (!c) continue;
        const inLive = live.delete(c.callId), inEnded = ended.delete(c.callId);
        liveChanged = liveChanged || inLive; endedChanged = endedChanged || inEnded;
        if (!matches(c)) continue;
        if (c.status === "ended") { if (showEnded()) { ended.set(c.callId, c); endedChanged = true; } }
        else if (showLive()) { live.set(c.callId, c); liveChanged = true; }
      }
      if (liveChanged) renderLive(ids);
      if (endedChanged) renderEnded(ids);
    }

    async function reload() {
      fillForm();
      try {
        await Promise.all([loadLive(), loadEnded(false), loadStats()]);
        if ($("banner").classList.contains("bad")) banner("", "");
      } catch (err) {
        showFailure(err, reload);
      }
    }
    onResume = () => { loadStats().catch(() => {}); };

    async function start() {
      fillForm();
      writeFilters(f, false);
      try {
        // the newest change first, so that the stream starts where the lists end
        const head = await api("/calls?limit=1");
        const after = head.calls.length ? head.calls[0].lastSeq : 0;
        await reload();
        if (!head.calls.length) {
          banner("info", "No calls yet. Point Bandwidth's callback URLs at " + location.origin + BASE +
            "/callbacks: calls appear here as their events arrive.");
        }
        if (!stream) stream = openStream(after, onEvents, streamState);
      } catch (err) {
        showFailure(err, start);
      }
    }
    start();
  }

  function showFailure(err, retry) {
    if (err.status === 401) { location.reload(); return; }
    const what = err.status === 0 ? "The tracker is not reachable." : "The tracker answered: " + err.message;
    banner("bad", what + " Retrying in 5 seconds…");
    pill("down", "offline");
    setTimeout(retry, 5000);
  }

  // ---------------------------------------------------------------------------------------
  // A call's page

  function callPage(id) {
    $("call").hidden = false;
    $("call-id").textContent = id;
    document.title = "Call " + id + " · tracker";
    let timer = null;

    // the timeline comes in pages (limit, after, next): read up to 5,000 events of it
    async function timelineOf() {
      let events = [], after = null;
      do {
        const page = await api("/calls/" + enc(id) + "/events?limit=1000" + (after ? "&after=" + enc(after) : ""));
        events = events.concat(page.events);
        after = page.next;
      } while (after && events.length < 5000);
      return { events: events, more: after !== null };
    }

    async function load() {
      let call, timeline;
      try {
        [call, timeline] = await Promise.all([api("/calls/" + enc(id)), timelineOf()]);
      } catch (err) {
        if (err.status === 404) {
          $("call-body").hidden = true;
          const m = $("call-missing");
          m.hidden = false;
          m.textContent = "No call with this id (yet). It appears here as soon as one of its events arrives.";
          return 0;
        }
        showFailure(err, load);
        return 0;
      }
      $("call-missing").hidden = true;
      $("call-body").hidden = false;
      $("call-badge").replaceChildren(badge(call.status), " ", call.outcome ? badge(call.outcome) : "");
      const fields = [
        ["Status", call.status], ["Outcome", call.outcome], ["Cause", call.cause], ["Error", call.errorMessage],
        ["API", call.api], ["Direction", call.direction], ["From", call.from], ["To", call.to],
        ["Started", fmtTime(call.startedAt)], ["Answered", fmtTime(call.answeredAt)], ["Ended", fmtTime(call.endedAt)],
        ["Ring", fmtSecs(call.ringSeconds)], ["Talk", fmtSecs(call.talkSeconds)], ["Total", fmtSecs(call.durationSeconds)],
        ["Tag", call.tag], ["Parent call", call.parentCallId], ["Events", String(call.eventCount)],
        ["Seq", call.firstSeq + " – " + call.lastSeq],
      ];
      $("call-state").replaceChildren(...fields.flatMap(([k, v]) => {
        const dd = el("dd", { text: v == null || v === "" ? "—" : v });
        if (k === "Parent call" && v) dd.replaceChildren(el("a", { href: callHref(v), text: v }));
        return [el("dt", { text: k }), dd];
      }));
      const explain = {
        conflicting_end: "two different hard ends (hangup/disconnect) arrived; the earliest counts",
        event_after_end: "an event is timed after the call ended",
        unparseable_time: "an event's time could not be read",
        reconciled: "the end comes from Bandwidth's call API, not a callback",
      };
      $("call-anomalies").replaceChildren(...(call.anomalies.length
        ? call.anomalies.map((a) => el("li", null, el("code", { text: a }), " — " + (explain[a] || "")))
        : [el("li", { class: "none", text: "None." })]));
      $("timeline-count").textContent = "(" + timeline.events.length + (timeline.more ? " of " + call.eventCount : "") + ")";
      $("timeline").replaceChildren(...timeline.events.map((e) => el("li", null,
        el("div", { class: "what", text: e.eventType }),
        el("div", { class: "meta", text: "time " + fmtTime(e.time) + " · received " + fmtTime(e.receivedAt) + " · seq " + e.seq }),
        el("details", null, el("summary", { text: "Raw payload" }), el("pre", { text: JSON.stringify(e.payload, null, 2) })))));
      return call.lastSeq || 0;
    }
    (async () => {
      const after = await load();
      const head = await api("/calls?limit=1").catch(() => null);
      const from = head && head.calls.length ? Math.max(after, head.calls[0].lastSeq) : after;
      openStream(from, (events) => {
        if (!events.some((e) => e.callId === id) || timer) return;
        timer = setTimeout(() => { timer = null; load(); }, 300);
      }, (state) => { if (state === "resumed") load(); streamState(state === "resumed" ? "live" : state); });
    })();
  }

  // ---------------------------------------------------------------------------------------

  function main() {
    if (AUTH === "signed-in") $("sign-out").hidden = false;
    if (AUTH === "sign-in") {
      $("sign-in").hidden = false;
      pill("", "signed out");
      return;
    }
    const path = location.pathname.slice(BASE.length);
    if (path.startsWith("/ui/calls/")) {
      let id = path.slice("/ui/calls/".length);
      try { id = decodeURIComponent(id); } catch (e) { /* shown as it is */ }
      callPage(id);
    } else {
      dashboard();
    }
  }
  main();
})();
