// Hypergate dashboard. Polls the admin API every 2 s and draws charts (uPlot) and
// panels. Plain JS, no framework, no build step; the DOM is built with
// textContent only (no HTML strings), so names from the config are never markup.
//
// Live request and 5xx rates are deltas of the cumulative counters in /stats
// between two polls; history, latency, tokens and cost come from the per-minute
// rollups of /hypercare/series. Once charts hold data, `document.body.dataset.ready`
// is the number of charts drawn with at least one point (the browser test reads it).
//
// The call log (/hypercare/calls) is not polled: it loads at start, when a filter
// changes, on "Refresh" and on "Older calls" (next_cursor). A click on a row shows
// that call from /hypercare/calls/<id>; a click on a point of the requests or
// error per-minute chart filters the log to that minute (and to errors) and
// scrolls to it.
"use strict";

(function () {
  const POLL_MS = 2000;
  const CALLS_PAGE = 50; // calls per page of the call log
  const PICK_PX = 12; // how near a chart click must be to a point to pick its minute
  const LIVE_POINTS = 150; // five minutes of live samples
  const PALETTE = [
    "#2f6fdf", "#e8590c", "#2b8a3e", "#ae3ec9", "#0b7285",
    "#c92a2a", "#f08c00", "#5f3dc4", "#087f5b", "#868e96",
  ];

  const $ = (id) => document.getElementById(id);

  // ---------- DOM and formatting helpers ----------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "width") e.style.width = v;
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function replace(id, ...children) {
    $(id).replaceChildren(...children.flat().filter((c) => c));
  }

  function none(text) {
    return el("div", { class: "none" }, text);
  }

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) =>
        el("th", { class: h.startsWith("#") ? "num" : null }, h.replace(/^#/, ""))))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c, i) =>
        el("td", { class: headers[i].startsWith("#") ? "num" : (headers[i] === "Reason" || headers[i] === "Evidence") ? "wrap" : null }, c))))));
  }

  function badge(text, tone) {
    return el("span", { class: "badge " + (tone || "") }, text);
  }

  const finite = (v) => typeof v === "number" && Number.isFinite(v);

  function fmtNum(v) {
    if (!finite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(2) + " G";
    if (a >= 1e6) return (v / 1e6).toFixed(2) + " M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + " k";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2);
  }
  function fmtRate(v) { return finite(v) ? fmtNum(v) + "/s" : "–"; }
  function fmtPct(share) {
    if (!finite(share)) return "–";
    const p = share * 100;
    return (p === 0 ? "0" : p < 0.1 ? p.toFixed(3) : p < 10 ? p.toFixed(2) : p.toFixed(1)) + " %";
  }
  function fmtMs(ms) {
    if (!finite(ms)) return "–";
    if (ms === 0) return "0 ms";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    return (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)) + " ms";
  }
  const fmtUs = (us) => (finite(us) ? fmtMs(us / 1000) : "–");
  function fmtUsd(v) {
    if (!finite(v)) return "–";
    return "$" + (v === 0 ? "0" : v < 0.01 ? v.toFixed(5) : v < 100 ? v.toFixed(3) : v.toFixed(0));
  }
  function fmtDuration(s) {
    if (!finite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function fmtSince(unixMs) {
    if (!finite(unixMs) || unixMs <= 0) return "–";
    return fmtDuration((Date.now() - unixMs) / 1000) + " ago";
  }
  const fmtZ = (v) => (finite(v) ? v.toFixed(2) : "n/a");

  // ---------- charts ----------

  // One colour per route/version (or other series key), the same in every chart.
  const colours = new Map();
  function colour(key) {
    if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length]);
    return colours.get(key);
  }

  const charts = [];

  // A uPlot chart that is rebuilt when its set of series changes and otherwise
  // just gets new data. `series`: [{label, key, values, dash}], aligned with `t`.
  // `xRange`, when given, returns the [from, to] unix seconds the x axis spans.
  // `onPick`, when given, is called with the time (unix seconds) of the point a
  // click lands on (the nearest time with a value, within PICK_PX pixels).
  class Chart {
    constructor(id, title, fmt, xRange, onPick) {
      this.root = $(id);
      this.title = title;
      this.fmt = fmt;
      this.xRange = xRange;
      this.onPick = onPick;
      if (onPick) this.root.classList.add("pickable");
      this.plot = null;
      this.signature = "";
      this.points = 0;
      this.empty = el("div", { class: "empty" }, "No data yet");
      charts.push(this);
    }

    update(t, series) {
      const signature = series.map((s) => s.label).join("\n");
      if (!this.plot || signature !== this.signature) {
        if (this.plot) this.plot.destroy();
        this.plot = new uPlot(this.options(series), [t, ...series.map((s) => s.values)], this.root);
        this.signature = signature;
        if (this.onPick) this.plot.over.addEventListener("click", (event) => this.pick(event));
      } else {
        this.plot.setData([t, ...series.map((s) => s.values)]);
      }
      this.points = series.reduce((n, s) => n + s.values.filter(finite).length, 0);
      if (this.points === 0) this.root.append(this.empty);
      else this.empty.remove();
    }

    options(series) {
      const fmt = this.fmt;
      return {
        title: this.title,
        width: Math.max(this.root.clientWidth, 300),
        height: 220,
        cursor: { drag: { x: false, y: false } },
        legend: { live: false },
        scales: {
          x: this.xRange ? { time: true, range: () => this.xRange() } : { time: true },
          y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] },
        },
        series: [
          {},
          ...series.map((s) => ({
            label: s.label,
            stroke: colour(s.key),
            width: s.dash ? 1.25 : 1.75,
            dash: s.dash ? [5, 4] : undefined,
            spanGaps: false,
            points: { size: 5 },
          })),
        ],
        axes: [
          { stroke: "#6b7488", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e3e7ee" } },
          {
            stroke: "#6b7488",
            grid: { stroke: "#eef0f4" },
            ticks: { stroke: "#e3e7ee" },
            size: 64,
            values: (u, vals) => vals.map((v) => fmt(v)),
          },
        ],
      };
    }

    pick(event) {
      const u = this.plot;
      if (!u) return;
      const x = event.clientX - u.over.getBoundingClientRect().left;
      const times = u.data[0] || [];
      let best = -1;
      let distance = Infinity;
      times.forEach((t, i) => {
        if (!u.data.slice(1).some((values) => finite(values[i]))) return;
        const d = Math.abs(u.valToPos(t, "x") - x);
        if (d < distance) {
          best = i;
          distance = d;
        }
      });
      if (best >= 0 && distance <= PICK_PX) this.onPick(times[best]);
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: Math.max(this.root.clientWidth, 300), height: 220 });
    }
  }

  // Live samples: poll times, and per route/version key the request rate and
  // 5xx share between the previous poll and this one (`latest`: the last pair).
  const live = { t: [], keys: [], rate: new Map(), errors: new Map(), prev: null, latest: new Map() };

  // Live charts span at least a minute, so the time axis has whole-second ticks.
  const liveRange = () => {
    const last = live.t.length ? live.t[live.t.length - 1] : Date.now() / 1000;
    return [Math.min(live.t.length ? live.t[0] : last, last - 60), last];
  };
  const liveRate = new Chart("chart-live-rate", "Request rate by route / version", fmtRate, liveRange);
  const liveErrors = new Chart("chart-live-errors", "5xx share by route / version", (v) => fmtPct(v / 100), liveRange);
  // History charts span the selected window, up to now.
  const WINDOW_SECONDS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400 };
  const historyRange = () => {
    const now = Date.now() / 1000;
    return [now - (WINDOW_SECONDS[$("window").value] || 3600), now];
  };
  const histRequests = new Chart("chart-hist-requests", "Requests per minute", fmtNum, historyRange,
    (t) => pickMinute(t, ""));
  const histErrors = new Chart("chart-hist-errors", "Error share per minute (upstream errors, gateway errors, timeouts)",
    (v) => fmtPct(v / 100), historyRange, (t) => pickMinute(t, "error"));
  const histLatency = new Chart("chart-hist-latency", "Latency p50 (dashed) / p99", fmtMs, historyRange);
  const llmTokens = new Chart("chart-llm-tokens", "LLM tokens per minute", fmtNum, historyRange);
  const llmCost = new Chart("chart-llm-cost", "LLM cost per minute", fmtUsd, historyRange);

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => charts.forEach((c) => c.resize()), 150);
  });

  // ---------- live rates from /stats ----------

  // Cumulative totals per route/version target with traffic: key -> {route, total, errors}.
  function targetTotals(stats) {
    const out = new Map();
    for (const [route, r] of Object.entries((stats && stats.routes) || {})) {
      for (const target of r.by_target || []) {
        const side = target.version || target.cluster || "";
        const key = side ? route + " · " + side : route;
        const status = target.status || {};
        const total = Object.values(status).reduce((a, b) => a + (finite(b) ? b : 0), 0);
        if (total === 0) continue;
        const prev = out.get(key) || { route, total: 0, errors: 0 };
        prev.total += total;
        prev.errors += finite(status["5xx"]) ? status["5xx"] : 0;
        out.set(key, prev);
      }
    }
    return out;
  }

  function pushLive(stats, nowS) {
    const totals = targetTotals(stats);
    const prev = live.prev;
    live.prev = { at: nowS, totals };
    if (!prev || nowS <= prev.at) return;
    const dt = nowS - prev.at;
    live.t.push(nowS);
    for (const key of totals.keys()) {
      if (!live.rate.has(key)) {
        live.keys.push(key);
        live.rate.set(key, live.t.slice(0, -1).map(() => null));
        live.errors.set(key, live.t.slice(0, -1).map(() => null));
      }
    }
    live.latest = new Map();
    for (const key of live.keys) {
      const now = totals.get(key);
      const before = prev.totals.get(key) || { total: 0, errors: 0 };
      let rate = null;
      let share = null;
      if (now && now.total >= before.total) {
        const d = now.total - before.total;
        rate = d / dt;
        share = d > 0 ? Math.max(0, now.errors - before.errors) / d : null;
        live.latest.set(key, { rate, share });
      }
      live.rate.get(key).push(rate);
      live.errors.get(key).push(share === null ? null : share * 100);
    }
    if (live.t.length > LIVE_POINTS) {
      live.t.shift();
      for (const key of live.keys) {
        live.rate.get(key).shift();
        live.errors.get(key).shift();
      }
    }
  }

  function drawLive() {
    liveRate.update(live.t, live.keys.map((key) => ({ label: key, key, values: live.rate.get(key) })));
    liveErrors.update(live.t, live.keys.map((key) => ({ label: key, key, values: live.errors.get(key) })));
  }

  // ---------- history from /hypercare/series ----------

  // Aligns the per-entry minute arrays on one time axis.
  function alignSeries(entries) {
    const times = [...new Set(entries.flatMap((e) => e.t || []))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const column = (e, pick) => {
      const out = times.map(() => null);
      (e.t || []).forEach((t, i) => {
        const v = pick(i);
        out[index.get(t)] = finite(v) ? v : null;
      });
      return out;
    };
    return { times, column };
  }

  function drawHistory(data) {
    const entries = ((data && data.series) || []).filter((e) => Array.isArray(e.t));
    const { times, column } = alignSeries(entries);
    const label = (e) => (e.version ? e.route + " · " + e.version : e.route);
    const sum = (a) => (a || []).reduce((x, y) => x + (finite(y) ? y : 0), 0);
    histRequests.update(times, entries.map((e) => ({
      label: label(e), key: label(e), values: column(e, (i) => e.requests[i]),
    })));
    histErrors.update(times, entries.map((e) => ({
      label: label(e), key: label(e),
      values: column(e, (i) => (e.requests[i] > 0 ? (100 * e.errors[i]) / e.requests[i] : null)),
    })));
    histLatency.update(times, entries.flatMap((e) => [
      { label: label(e) + " p50", key: label(e), dash: true, values: column(e, (i) => (e.requests[i] > 0 ? e.p50_ms[i] : null)) },
      { label: label(e) + " p99", key: label(e), values: column(e, (i) => (e.requests[i] > 0 ? e.p99_ms[i] : null)) },
    ]));
    const llm = entries.filter((e) => sum(e.tokens) > 0 || sum(e.cost_usd) > 0);
    llmTokens.update(times, llm.map((e) => ({ label: label(e), key: label(e), values: column(e, (i) => e.tokens[i]) })));
    llmCost.update(times, llm.map((e) => ({ label: label(e), key: label(e), values: column(e, (i) => e.cost_usd[i]) })));
  }

  // ---------- tiles ----------

  function tile(label, value, sub, tone) {
    return el("div", { class: "tile " + (tone || "") },
      el("div", { class: "label" }, label),
      el("div", { class: "value" }, value),
      el("div", { class: "sub" }, sub || "\u00a0"));
  }

  function drawTiles(stats, canary, alerts, summary) {
    let rate = null;
    let errors = 0;
    for (const v of live.latest.values()) {
      rate = (rate || 0) + v.rate;
      if (finite(v.share)) errors += v.share * v.rate;
    }
    const share = rate > 0 ? errors / rate : null;
    const canaries = (canary && canary.canaries) || [];
    const firstCanary = canaries[0];
    // The rules firing now, as /hypercare/alerts lists them by name in `firing`
    // (its rule states as a fallback); a firing event with no rule behind it (a
    // canary rollback) or one already resolved shows as the last one fired.
    const rules = (alerts && alerts.alerts) || [];
    const firing = Array.isArray(alerts && alerts.firing)
      ? alerts.firing.map(String)
      : rules.filter((a) => a.state === "firing").map((a) => (a.rule && a.rule.name) || "?");
    const lastFired = [...((alerts && alerts.events) || [])].reverse().find((e) => e.state === "firing");
    const calls = (stats && stats.llm && stats.llm.calls) || [];
    const cost = calls.reduce((a, c) => a + (finite(c.cost_usd) ? c.cost_usd : 0), 0);
    const tokens = calls.reduce((a, c) => a + (c.prompt || 0) + (c.completion || 0), 0);
    const total = (summary && summary.total) || {};
    const total5xx = total.status && total.status["5xx"];
    replace("tiles",
      tile("Requests", fmtRate(rate), finite(total.requests) ? fmtNum(total.requests) + " in the last " + windowLabel() : null),
      tile("5xx share (live)", fmtPct(share), finite(total5xx) ? fmtNum(total5xx) + " 5xx in the last " + windowLabel() : null,
        share > 0.01 ? "bad" : null),
      tile("Connections", fmtNum(stats && stats.active_connections),
        stats ? fmtNum(stats.accepted_connections) + " accepted, " + fmtNum(stats.shards) + " shards" : null),
      firstCanary
        ? tile("Canary " + firstCanary.route, (firstCanary.weight ?? "–") + " %",
          phaseText(firstCanary.status && firstCanary.status.phase) + (canaries.length > 1 ? " (+" + (canaries.length - 1) + " more)" : ""),
          phaseTone(firstCanary.status && firstCanary.status.phase) === "bad" ? "bad" : null)
        : tile("Canary", "none", "no canary configured"),
      tile("Alerts firing", alerts ? String(firing.length) : "–",
        firing.length ? firing.join(", ")
          : lastFired ? "last fired: " + lastFired.alert + ", " + fmtSince(lastFired.at_ms)
            : alerts ? rules.length + " rules" : "alerts unavailable",
        !alerts ? null : firing.length ? "bad" : "good"),
      tile("LLM spend", fmtUsd(cost), fmtNum(tokens) + " tokens since start"));
  }

  // ---------- routes ----------

  function drawRoutes(stats) {
    const routes = Object.entries((stats && stats.routes) || {}).sort(([a], [b]) => a.localeCompare(b));
    if (routes.length === 0) return replace("routes", none("No requests routed yet."));
    const rows = [];
    for (const [route, r] of routes) {
      const lat = r.latency || {};
      const served = (r.by_target || []).filter((t) => Object.values(t.status || {}).some((n) => n > 0));
      const targets = served.length ? served : [{}];
      targets.forEach((target, i) => {
        const st = target.status || {};
        const total = Object.values(st).reduce((a, b) => a + (finite(b) ? b : 0), 0);
        const side = target.version || target.cluster || "";
        const now = live.latest.get(side ? route + " · " + side : route) || {};
        rows.push([
          i === 0 ? el("strong", {}, route) : "",
          target.cluster || "–",
          target.version || "–",
          fmtNum(total),
          fmtNum(st["2xx"] || 0),
          fmtNum(st["4xx"] || 0),
          fmtNum(st["5xx"] || 0),
          fmtRate(now.rate),
          fmtPct(now.share),
          i === 0 ? fmtUs(lat.p50_us) : "",
          i === 0 ? fmtUs(lat.p99_us) : "",
        ]);
      });
    }
    replace("routes", table(
      ["Route", "Cluster", "Version", "#Requests", "#2xx", "#4xx", "#5xx", "#Rate", "#5xx share", "#Route p50", "#Route p99"],
      rows));
  }

  // ---------- canary ----------

  function phaseText(phase) {
    return { running: "running", rolled_back: "rolled back", completed: "completed" }[phase] || phase || "unknown";
  }
  function phaseTone(phase) {
    return { running: "info", rolled_back: "bad", completed: "ok" }[phase] || "";
  }
  function actionTone(action) {
    return { hold: "", promote: "info", rollback: "bad", complete: "ok" }[action] || "";
  }

  // A decision's reason (a string or a tagged object) in words.
  function reasonText(reason) {
    if (reason === undefined || reason === null) return "";
    if (typeof reason !== "object") return String(reason);
    const kind = (reason.kind || "").replace(/_/g, " ");
    const rest = Object.entries(reason)
      .filter(([k]) => k !== "kind")
      .map(([k, v]) => k.replace(/_/g, " ") + " " + (typeof v === "number" ? fmtNum(v) : JSON.stringify(v)));
    return [kind, rest.join(", ")].filter((s) => s).join(": ");
  }

  // Error-rate and latency evidence: counts, rates, statistic vs threshold.
  function evidenceText(ev) {
    if (!ev) return "";
    const parts = [];
    const er = ev.error_rate;
    if (er) {
      const s = er.stable || {};
      const c = er.canary || {};
      parts.push("errors: canary " + fmtPct(er.canary_rate) + " (" + fmtNum(c.errors) + "/" + fmtNum(c.requests) +
        ") vs stable " + fmtPct(er.stable_rate) + " (" + fmtNum(s.errors) + "/" + fmtNum(s.requests) +
        "), z " + fmtZ(er.statistic) + " vs " + fmtZ(er.threshold) + (er.verdict ? ", " + er.verdict.replace(/_/g, " ") : ""));
    }
    const lat = ev.latency;
    if (lat) {
      const q = finite(lat.quantile) ? "p" + Math.round(lat.quantile * 100) : "quantile";
      parts.push("latency " + q + ": canary " + fmtUs(lat.canary_quantile) + " vs stable " + fmtUs(lat.stable_quantile) +
        " (bound " + fmtUs(lat.bound) + "), z " + fmtZ(lat.statistic) + " vs " + fmtZ(lat.threshold) +
        (lat.verdict ? ", " + lat.verdict.replace(/_/g, " ") : ""));
    }
    for (const extra of ev.extra || []) {
      parts.push((extra.name || "judge") + ": z " + fmtZ(extra.statistic) + " vs " + fmtZ(extra.threshold) +
        (extra.verdict ? ", " + extra.verdict.replace(/_/g, " ") : ""));
    }
    return parts.join("; ");
  }

  function side(label, counts) {
    const c = counts || {};
    const share = c.requests > 0 ? c.errors / c.requests : null;
    return el("div", { class: "side" },
      el("div", { class: "label" }, label),
      el("div", { class: "value" }, fmtNum(c.requests || 0) + " req"),
      el("div", { class: "subtle" }, fmtNum(c.errors || 0) + " errors · " + fmtPct(share)));
  }

  function drawCanary(data) {
    const canaries = (data && data.canaries) || [];
    if (canaries.length === 0) {
      return replace("canaries", el("div", { class: "card" }, none("No canary configured.")));
    }
    replace("canaries", canaries.map((c) => {
      const st = c.status || {};
      const steps = (c.plan && c.plan.steps) || [];
      const history = (st.history || []).slice(-8).reverse();
      const weight = finite(c.weight) ? c.weight : 0;
      return el("div", { class: "card" },
        el("div", { class: "canary-head" },
          el("h3", {}, c.route),
          el("span", { class: "flow" }, (c.stable || "?") + " → " + (c.canary || "?")),
          badge(phaseText(st.phase), phaseTone(st.phase)),
          el("span", { class: "subtle" }, steps.length
            ? "step " + ((st.step || 0) + 1) + " of " + steps.length
            : "step " + ((st.step || 0) + 1))),
        el("div", { class: "canary-sides" },
          side("Stable " + (c.stable || ""), st.stable),
          side("Canary " + (c.canary || ""), st.canary),
          el("div", { class: "side" },
            el("div", { class: "label" }, "Canary weight"),
            el("div", { class: "value" }, weight + " %"),
            el("div", { class: "bar " + (st.phase === "rolled_back" ? "bad" : st.phase === "completed" ? "ok" : "") },
              el("div", { width: Math.min(100, Math.max(0, weight)) + "%" })))),
        history.length === 0
          ? none("No decision yet.")
          : table(["When", "#Step", "#Weight", "Decision", "Reason", "Evidence"], history.map((h) => {
            const d = h.decision || {};
            return [
              "t+" + fmtDuration(h.at),
              String((h.step || 0) + 1),
              (h.weight ?? "–") + " %",
              badge(d.action || "?", actionTone(d.action)),
              reasonText(d.reason),
              evidenceText(d.evidence),
            ];
          })));
    }));
  }

  // ---------- alerts ----------

  function alertTone(state) {
    return { firing: "bad", pending: "warn", resolved: "ok", inactive: "" }[state] || "";
  }

  function alertValue(kind, v) {
    if (!finite(v)) return "–";
    if (kind === "error_rate") return fmtPct(v);
    if (kind === "latency") return fmtMs(v);
    if (kind && kind.includes("cost")) return fmtUsd(v);
    return fmtNum(v);
  }

  function drawAlerts(data) {
    const alerts = (data && data.alerts) || [];
    if (alerts.length === 0) return replace("alerts", none("No alert rules configured."));
    const order = { firing: 0, pending: 1, resolved: 2, inactive: 3 };
    const sorted = [...alerts].sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9));
    replace("alerts", table(["Rule", "Kind", "Scope", "State", "#Value", "#Threshold", "Since"], sorted.map((a) => {
      const r = a.rule || {};
      return [
        el("span", {}, el("strong", {}, r.name || "?"), r.severity ? el("span", { class: "subtle" }, " · " + r.severity) : null),
        (r.kind || "").replace(/_/g, " ") + (r.kind === "latency" && finite(r.quantile) ? " p" + Math.round(r.quantile * 100) : ""),
        [r.route, r.version, r.model].filter((x) => x).join(" · ") || "all",
        badge(a.state || "?", alertTone(a.state)),
        alertValue(r.kind, a.value),
        alertValue(r.kind, r.threshold),
        fmtSince(a.since_ms),
      ];
    })));
  }

  // ---------- hypercare windows ----------

  function verdictTone(v) {
    return { exit: "ok", extend: "warn", roll_back: "bad", in_progress: "info" }[v] || "";
  }

  function criterionValue(v) {
    if (v === null || v === undefined) return "no data";
    if (Array.isArray(v)) return v.length ? v.join(", ") : "none";
    if (typeof v === "number") return fmtNum(v);
    return String(v);
  }

  function drawWindows(data) {
    const windows = (data && data.windows) || [];
    if (windows.length === 0) return replace("windows", none("No hypercare windows configured."));
    replace("windows", windows.map((w) => {
      const share = w.required_s > 0 ? Math.min(1, (w.met_for_s || 0) / w.required_s) : 0;
      return el("div", { class: "window" },
        el("div", { class: "head" },
          el("h3", {}, w.name || "?"),
          el("span", { class: "subtle" }, [w.route, w.version].filter((x) => x).join(" · ") || "all routes"),
          badge((w.verdict || "in_progress").replace(/_/g, " "), verdictTone(w.verdict))),
        el("div", { class: "subtle" }, w.progress || ""),
        el("div", { class: "bar " + (w.verdict === "exit" ? "ok" : w.verdict === "roll_back" ? "bad" : "") },
          el("div", { width: (share * 100).toFixed(1) + "%" })),
        el("ul", {}, (w.criteria || []).map((c) => el("li", {},
          el("span", { class: c.met ? "mark-ok" : "mark-bad" }, c.met ? "✓" : "✗"),
          c.description || "",
          el("span", { class: "subtle" }, " (" + criterionValue(c.value) + ")")))));
    }));
  }

  // ---------- fleet ----------

  function drawFleet(data) {
    const section = $("fleet-section");
    if (!data || !data.enabled) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    const leader = data.leader ? data.leader.id + " (token " + data.leader.token + ")" : "none";
    const redis = data.redis || {};
    replace("fleet",
      el("div", { class: "subtle" },
        "Fleet " + (data.fleet || "?") + " · this instance " + (data.instance || "?") +
        " · leader " + leader + " · decision epoch " + fmtNum(data.applied_epoch || 0) + " · Redis ",
        badge(redis.up ? "up" : "down", redis.up ? "ok" : "bad")),
      table(["Instance", "Role", "Last seen", "Config", "Epoch", "#Requests", "#Errors", "#Error rate"],
        (data.instances || []).map((m) => [
          m.id || "?",
          m.leader ? "leader" : "follower",
          fmtNum(m.last_seen_ago_ms || 0) + " ms ago",
          m.config_hash || "–",
          fmtNum(m.applied_epoch || 0),
          fmtNum(m.requests || 0),
          fmtNum(m.errors || 0),
          m.requests > 0 ? fmtPct((m.errors || 0) / m.requests) : "–",
        ])));
  }

  // ---------- LLM ----------

  function drawLlm(stats) {
    const llm = (stats && stats.llm) || {};
    const calls = llm.calls || [];
    if (calls.length === 0) return replace("llm", none("No LLM calls yet."));
    const q = (h, k) => (h ? fmtUs(h[k]) : "–");
    const cache = (llm.cache_hits || 0) + (llm.cache_misses || 0);
    replace("llm",
      table(["Route", "Alias", "Target", "Consumer", "#OK", "#Errors", "#Prompt tok", "#Completion tok", "#Cost",
        "#TTFT p50", "#TTFT p99", "#ITL p50", "#ITL p99"],
      calls.map((c) => [
        c.route || "–", c.alias || "–", c.target || "–", c.consumer || "–",
        fmtNum(c.ok), fmtNum(c.errors), fmtNum(c.prompt), fmtNum(c.completion), fmtUsd(c.cost_usd),
        q(c.ttft, "p50_us"), q(c.ttft, "p99_us"), q(c.itl, "p50_us"), q(c.itl, "p99_us"),
      ])),
      el("div", { class: "subtle" }, "Response cache: " + fmtNum(llm.cache_hits || 0) + " hits of " + fmtNum(cache) +
        " lookups" + (cache > 0 ? " (" + fmtPct((llm.cache_hits || 0) / cache) + ")" : "")));
  }

  // ---------- kernel TCP ----------

  function drawTcp(stats) {
    const tcp = stats && stats.tcp;
    const section = $("tcp-section");
    if (!tcp || typeof tcp !== "object") {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    if (tcp.error) return replace("tcp", none(String(tcp.error)));
    const q = (h, k) => (h && h.count ? fmtUs(h[k]) : "–");
    const row = (kind, name, p) => [
      kind, name, fmtNum(p.open), fmtNum(p.opened), fmtNum(p.connect_failures),
      q(p.srtt_all || p.srtt, "p50_us"), q(p.srtt_all || p.srtt, "p99_us"),
      q(p.handshake, "p50_us"), q(p.handshake, "p99_us"),
      fmtNum(p.retransmits), fmtNum(p.resets_received), fmtNum(p.resets_sent),
    ];
    const rows = [
      ...Object.entries(tcp.downstream || {}).map(([n, p]) => row("listener", n, p)),
      ...Object.entries(tcp.upstream || {}).map(([n, p]) => row("cluster", n, p)),
    ];
    const probe = tcp.probe || {};
    replace("tcp",
      rows.length === 0 ? none("No connections seen by the probe yet.") : table(
        ["Side", "Name", "#Open", "#Opened", "#Connect failures", "#sRTT p50", "#sRTT p99", "#Handshake p50",
          "#Handshake p99", "#Retransmits", "#Resets in", "#Resets out"], rows),
      el("div", { class: "subtle" }, "Probe: " + fmtNum(probe.events_lost || 0) + " events lost, " +
        fmtNum(probe.untracked_connections || 0) + " connections untracked"));
  }

  // ---------- call log ----------

  const callLog = {
    seq: 0, // the newest page request; older answers are dropped
    detailSeq: 0,
    query: "", // filters of the rows shown
    cursor: null, // next_cursor of the last page shown
    shown: 0,
    selected: null, // id of the call in the detail view
    pick: null, // {since, until} (unix ms) of a minute picked on a chart
  };
  const FILTERS = ["route", "version", "consumer", "model"];
  // Values seen per filter (from /hypercare/summary and the calls shown), offered
  // as suggestions; any text can be typed.
  const known = Object.fromEntries(FILTERS.map((f) => [f, new Set()]));
  const offered = Object.fromEntries(FILTERS.map((f) => [f, 0]));

  function learn(filter, value) {
    if (typeof value === "string" && value !== "") known[filter].add(value);
  }

  function offerValues() {
    for (const f of FILTERS) {
      if (known[f].size === offered[f]) continue;
      offered[f] = known[f].size;
      replace("calls-" + f + "-values", [...known[f]].sort().map((v) => el("option", { value: v })));
    }
  }

  function learnFromSummary(summary) {
    for (const g of (summary && summary.groups) || []) {
      learn("route", g.route);
      learn("version", g.version);
      learn("model", g.model);
    }
    offerValues();
    // With sampling ([hypercare.store] sample_ratio) the charts count every call
    // but only some have a row in the log.
    const rows = summary && summary.total && summary.total.rows;
    $("calls-sampling").textContent = rows && rows.complete === false
      ? "Rows kept for " + fmtNum(rows.recorded) + " of " + fmtNum(summary.total.requests) + " calls in the last " +
        windowLabel() + " (" + fmtNum(rows.sampled_out) + " sampled out, " + fmtNum(rows.dropped) + " dropped); the charts count every call."
      : "";
  }

  const two = (n) => String(n).padStart(2, "0");
  function fmtClock(ms, withMs) {
    const d = new Date(ms);
    const time = two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
    return withMs ? time + "." + String(d.getMilliseconds()).padStart(3, "0") : time;
  }
  function fmtDay(ms) {
    const d = new Date(ms);
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate());
  }
  // A call's time: the clock today, with the date on other days.
  function fmtWhen(ms) {
    if (!finite(ms)) return "–";
    const day = fmtDay(ms);
    return (day === fmtDay(Date.now()) ? "" : day + " ") + fmtClock(ms, true);
  }

  function statusBadge(status, error) {
    if (!finite(status)) return badge(error || "no answer", "bad");
    const tone = status >= 500 ? "bad" : status >= 400 ? "warn" : status >= 200 && status < 300 ? "ok" : "";
    return badge(String(status), tone);
  }

  // The query string of the filters as set now.
  function callQuery() {
    const params = [];
    const add = (k, v) => {
      if (v !== "" && v !== null && v !== undefined) params.push(k + "=" + encodeURIComponent(v));
    };
    const range = $("calls-range").value;
    if (range === "pick" && callLog.pick) {
      add("since", callLog.pick.since);
      add("until", callLog.pick.until);
    } else if (range !== "pick") {
      add("since", range);
    }
    add("route", $("calls-route").value.trim());
    add("version", $("calls-version").value.trim());
    add("status", $("calls-status").value);
    add("outcome", $("calls-outcome").value);
    add("consumer", $("calls-consumer").value.trim());
    add("model", $("calls-model").value.trim());
    add("limit", CALLS_PAGE);
    return params.join("&");
  }

  function callRow(c) {
    const llm = finite(c.prompt_tokens) || finite(c.completion_tokens);
    const tokens = (c.prompt_tokens || 0) + (c.completion_tokens || 0);
    const row = el("tr", { "data-id": c.id, tabindex: "0", class: c.id === callLog.selected ? "selected" : null },
      el("td", {}, fmtWhen(c.ts_ms)),
      el("td", {}, c.method || "–"),
      el("td", { class: "path", title: c.path }, c.path || "–"),
      el("td", {}, c.route || "–"),
      el("td", {}, c.version || "–"),
      el("td", { title: c.outcome ? "outcome " + c.outcome.replace(/_/g, " ") : null }, statusBadge(c.status, c.error)),
      el("td", { class: "num" }, fmtUs(c.total_us)),
      el("td", { title: c.alias ? "alias " + c.alias : null }, c.model || c.alias || "–"),
      el("td", { class: "num" }, llm ? fmtNum(tokens) : "–"),
      el("td", { class: "num" }, finite(c.cost_usd) ? fmtUsd(c.cost_usd) : "–"));
    row.addEventListener("click", () => openCall(c.id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") openCall(c.id);
    });
    return row;
  }

  function callTable(rows) {
    const head = ["Time", "Method", "Path", "Route", "Version", "Status", "#Latency", "Model", "#Tokens", "#Cost"];
    return el("table", {},
      el("thead", {}, el("tr", {}, head.map((h) =>
        el("th", { class: h.startsWith("#") ? "num" : null }, h.replace(/^#/, ""))))),
      el("tbody", {}, rows));
  }

  // Loads the newest page for the filters as set, or (`older`) the next page of
  // the rows shown, appended to them.
  async function loadCalls(older) {
    const seq = ++callLog.seq;
    const query = older ? callLog.query : callQuery();
    const url = "/hypercare/calls?" + query + (older && callLog.cursor !== null ? "&cursor=" + callLog.cursor : "");
    const box = $("calls");
    box.dataset.state = "loading";
    $("calls-state").textContent = "loading…";
    let data;
    try {
      data = await getJson(url);
    } catch (e) {
      if (seq !== callLog.seq) return;
      box.dataset.state = "error";
      $("calls-state").textContent = "";
      if (!older) replace("calls", none("The call log could not be read: " + e.message));
      else $("calls-state").textContent = e.message;
      return;
    }
    if (seq !== callLog.seq) return;
    const page = (data && data.calls) || [];
    for (const c of page) {
      learn("route", c.route);
      learn("version", c.version);
      learn("consumer", c.consumer);
      learn("model", c.model);
      learn("model", c.alias);
    }
    offerValues();
    const rows = page.map(callRow);
    if (older && box.querySelector("tbody")) {
      box.querySelector("tbody").append(...rows);
      callLog.shown += rows.length;
    } else {
      callLog.shown = rows.length;
      replace("calls", rows.length ? callTable(rows) : none("No calls match these filters."));
    }
    callLog.query = query;
    callLog.cursor = finite(data && data.next_cursor) ? data.next_cursor : null;
    $("calls-older").hidden = callLog.cursor === null;
    $("calls-count").textContent = callLog.shown
      ? fmtNum(callLog.shown) + (callLog.shown === 1 ? " call" : " calls") + (callLog.cursor === null ? "" : ", older ones on request")
      : "";
    $("calls-state").textContent = "loaded " + new Date().toLocaleTimeString();
    box.dataset.state = "loaded";
  }

  // Label, value and format of each field of the detail view, by group; columns
  // not listed here show under "Other", so the view shows every column.
  const yesNo = (v) => (v === null || v === undefined ? "–" : v ? "yes" : "no");
  const fmtBytes = (v) => (finite(v) ? fmtNum(v) + " B" : "–");
  const DETAIL = [
    ["Request", [
      ["ts_ms", "Time", (v) => (finite(v) ? fmtDay(v) + " " + fmtClock(v, true) : "–")],
      ["request_id", "Request id"], ["trace_id", "Trace id"], ["method", "Method"], ["path", "Path"],
      ["route", "Route"], ["consumer", "Consumer"], ["cluster", "Cluster"], ["version", "Version"],
      ["endpoint", "Endpoint"], ["status", "Status"], ["outcome", "Outcome"], ["error", "Error"], ["retries", "Retries"],
      ["bytes_in", "Bytes in", fmtBytes], ["bytes_out", "Bytes out", fmtBytes],
    ]],
    ["Timings", [
      ["total_us", "Total", fmtUs], ["upstream_us", "Upstream", fmtUs], ["ttft_us", "First token", fmtUs],
    ]],
    ["LLM", [
      ["provider", "Provider"], ["model", "Model"], ["alias", "Alias"], ["target", "Target"],
      ["prompt_tokens", "Prompt tokens", fmtNum], ["completion_tokens", "Completion tokens", fmtNum],
      ["cached_tokens", "Cached tokens", fmtNum], ["reasoning_tokens", "Reasoning tokens", fmtNum],
      ["cost_usd", "Cost", fmtUsd], ["cost_nanos", "Cost (nano-dollars)"], ["estimated", "Cost estimated", yesNo], ["prompt", "Prompt"],
      ["prompt_version", "Prompt version"], ["cache_hit", "Cache hit", yesNo], ["guardrails", "Guardrails"],
    ]],
    ["Feedback", [["feedback_score", "Score", fmtNum], ["feedback_comment", "Comment"]]],
  ];
  const BODIES = [["request_body", "Request body"], ["response_body", "Response body"]];

  function fieldList(c, fields) {
    return el("dl", {}, fields.flatMap(([key, label, fmt]) => {
      const v = c[key];
      const shown = v === null || v === undefined || v === "" ? "–" : fmt ? fmt(v) : String(v);
      return [el("dt", {}, label), el("dd", { "data-field": key }, shown)];
    }));
  }

  function callDetail(c) {
    const listed = new Set([...DETAIL.flatMap(([, fields]) => fields.map(([k]) => k)), ...BODIES.map(([k]) => k), "id"]);
    const other = Object.keys(c).filter((k) => !listed.has(k)).sort().map((k) => [k, k.replace(/_/g, " ")]);
    const has = (fields) => fields.some(([k]) => c[k] !== null && c[k] !== undefined);
    const close = el("button", { type: "button", class: "close" }, "Close");
    close.addEventListener("click", closeCall);
    const groups = [...DETAIL, ...(other.length ? [["Other", other]] : [])].map(([name, fields]) =>
      el("div", {},
        el("h4", {}, name),
        name === "LLM" && !has(fields) ? none("Not an LLM call.")
          : name === "Feedback" && !has(fields) ? none("No feedback.")
            : fieldList(c, fields)));
    return [
      el("div", { class: "head" },
        el("h3", {}, "Call " + c.id),
        el("span", {}, (c.method || "") + " " + (c.path || "")),
        statusBadge(c.status, c.error),
        el("span", { class: "subtle" }, fmtUs(c.total_us)),
        close),
      el("div", { class: "groups" }, groups),
      BODIES.map(([key, label]) => el("div", {},
        el("h4", {}, label),
        typeof c[key] === "string"
          ? el("pre", { "data-field": key }, c[key] === "" ? "(empty)" : c[key])
          : none("Not captured (see capture_api_bodies and capture_llm_bodies)."))),
    ];
  }

  function markSelected() {
    for (const row of $("calls").querySelectorAll("tbody tr")) {
      row.classList.toggle("selected", row.dataset.id === String(callLog.selected));
    }
  }

  async function openCall(id) {
    callLog.selected = id;
    markSelected();
    const box = $("call-detail");
    const seq = ++callLog.detailSeq;
    box.hidden = false;
    box.dataset.id = "";
    box.replaceChildren(none("Loading call " + id + "…"));
    let c;
    try {
      c = await getJson("/hypercare/calls/" + encodeURIComponent(id));
    } catch (e) {
      if (seq === callLog.detailSeq) box.replaceChildren(none("Call " + id + " could not be read: " + e.message));
      return;
    }
    if (seq !== callLog.detailSeq) return;
    box.replaceChildren(...callDetail(c).flat());
    box.dataset.id = String(id);
    box.scrollIntoView({ block: "nearest" });
  }

  function closeCall() {
    callLog.detailSeq++;
    callLog.selected = null;
    markSelected();
    $("call-detail").hidden = true;
    $("call-detail").dataset.id = "";
  }

  // A click on a per-minute chart: the calls of that minute (`outcome` "error",
  // the errors of the service the chart plots, from the error chart; any from
  // the requests chart), other filters kept.
  function pickMinute(t, outcome) {
    const since = t * 1000;
    callLog.pick = { since, until: since + 60000 };
    const range = $("calls-range");
    let option = range.querySelector("option[value=pick]");
    if (!option) {
      option = el("option", { value: "pick" });
      range.append(option);
    }
    option.textContent = "minute " + fmtClock(since) + " – " + fmtClock(since + 60000);
    range.value = "pick";
    $("calls-status").value = "";
    $("calls-outcome").value = outcome || "";
    loadCalls(false);
    $("calls-section").scrollIntoView({ block: "start" });
  }

  $("calls-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCalls(false);
  });
  for (const id of ["calls-range", "calls-status", "calls-outcome", ...FILTERS.map((f) => "calls-" + f)]) {
    $(id).addEventListener("change", () => loadCalls(false));
  }
  $("calls-clear").addEventListener("click", () => {
    for (const f of FILTERS) $("calls-" + f).value = "";
    $("calls-status").value = "";
    $("calls-outcome").value = "";
    $("calls-range").value = "1h";
    loadCalls(false);
  });
  $("calls-older").addEventListener("click", () => loadCalls(true));

  // ---------- polling ----------

  const windowSelect = $("window");
  const windowLabel = () => windowSelect.options[windowSelect.selectedIndex].text;

  // With `admin.token` set, the JSON endpoints answer 401 until the page sends
  // the token: the page then asks for it once (the form under the top bar), keeps
  // it in sessionStorage (this tab only, gone when it closes) and sends it as
  // `Authorization: Bearer`. A token the API refuses is dropped and asked again.
  const TOKEN_KEY = "hypergate-admin-token";
  let asking = null;

  function askToken(refused) {
    if (!asking) {
      asking = new Promise((resolve) => {
        const form = $("login");
        $("login-error").textContent = refused ? "That token was refused." : "";
        form.hidden = false;
        $("login-token").focus();
        setStatus(false, "waiting for the admin token");
        form.addEventListener("submit", (event) => {
          event.preventDefault();
          sessionStorage.setItem(TOKEN_KEY, $("login-token").value.trim());
          $("login-token").value = "";
          form.hidden = true;
          asking = null;
          resolve();
        }, { once: true });
      });
    }
    return asking;
  }

  async function getJson(path) {
    for (;;) {
      const token = sessionStorage.getItem(TOKEN_KEY);
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const response = await fetch(path, { cache: "no-store", headers });
      if (response.status === 401) {
        // Another request may have stored a newer token (or dropped this one)
        // while this one was out: try with what is stored now.
        if (sessionStorage.getItem(TOKEN_KEY) !== token) continue;
        if (token !== null) sessionStorage.removeItem(TOKEN_KEY);
        await askToken(token !== null);
        continue;
      }
      if (!response.ok) {
        // The admin API explains its errors as {"error": "..."}.
        const body = await response.json().catch(() => null);
        const reason = body && typeof body.error === "string" ? ": " + body.error : "";
        const err = new Error(path + ": HTTP " + response.status + reason);
        err.status = response.status;
        throw err;
      }
      return response.json();
    }
  }

  function setStatus(ok, text) {
    $("status").className = "status " + (ok ? "ok" : "down");
    $("status-text").textContent = text;
  }

  // Runs one panel's renderer; a failure is reported and leaves the others drawn.
  function safely(name, draw, ...args) {
    try {
      draw(...args);
    } catch (e) {
      console.error("dashboard: drawing " + name + " failed:", e);
    }
  }

  async function poll() {
    const w = encodeURIComponent(windowSelect.value);
    const [stats, series, summary, canary, alerts, windows, fleet] = await Promise.allSettled([
      getJson("/stats"),
      getJson("/hypercare/series?window=" + w),
      getJson("/hypercare/summary?window=" + w),
      getJson("/hypercare/canary"),
      getJson("/hypercare/alerts"),
      getJson("/hypercare/windows"),
      getJson("/hypercare/fleet"),
    ]);
    const value = (r) => (r.status === "fulfilled" ? r.value : null);
    if (stats.status === "fulfilled") {
      setStatus(true, "updated " + new Date().toLocaleTimeString());
      safely("live rates", pushLive, stats.value, Date.now() / 1000);
    } else {
      setStatus(false, "admin API unreachable: " + stats.reason.message);
    }
    safely("live charts", drawLive);
    safely("history", drawHistory, value(series));
    safely("tiles", drawTiles, value(stats), value(canary), value(alerts), value(summary));
    safely("routes", drawRoutes, value(stats));
    safely("canary", drawCanary, value(canary));
    safely("alerts", drawAlerts, value(alerts));
    safely("windows", drawWindows, value(windows));
    safely("fleet", drawFleet, value(fleet));
    safely("LLM", drawLlm, value(stats));
    safely("TCP", drawTcp, value(stats));
    safely("call filters", learnFromSummary, value(summary));
    const drawn = charts.filter((c) => c.points > 0).length;
    if (drawn > 0) document.body.dataset.ready = String(drawn);
  }

  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);
  }

  windowSelect.addEventListener("change", () => poll());
  loop();
  loadCalls(false);
})();
