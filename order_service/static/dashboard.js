// The pipeline page: poll /dashboard/data and redraw the cards, the chart and the latest orders.
// Formatting mirrors templates/dashboard/page.html, so the first poll changes nothing but the data.
(function () {
  "use strict";
  const root = document.getElementById("pipeline");
  const url = root.dataset.url;
  const pollMs = Number(root.dataset.pollMs);
  const cap = Number(root.dataset.countCap);
  const updated = document.getElementById("updated");

  const count = (n) => (n < cap ? String(n) : n + "+");
  const ms = (s) => (s === null ? "—" : Math.round(s * 1000) + " ms");
  const age = (s) => s.toFixed(1) + " s";
  const money = (amount) => {
    const sign = amount < 0 ? "-" : "";
    const abs = Math.abs(amount);
    return sign + Math.floor(abs / 100) + "." + String(abs % 100).padStart(2, "0");
  };
  const FORMATS = {
    placed: count, invoiced: count, redriven_answered: count, backlog: count, retrying: count,
    parked: count, unacknowledged: count, redriven_unanswered: count,
    latency_p50_s: ms, latency_p95_s: ms, oldest_due_age_s: age,
  };

  let chart = null;
  function chartData(data) {
    return [data.bucket_starts, data.placed_per_s, data.invoiced_per_s];
  }
  function drawChart(data) {
    const box = document.getElementById("chart");
    if (chart) { chart.setData(chartData(data)); return; }
    const hms = (v) => new Date(v * 1000).toISOString().slice(11, 19);
    chart = new uPlot({
      width: Math.max(320, box.clientWidth - 16),
      height: 240,
      legend: { live: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { values: (u, splits) => splits.map(hms), space: 90, label: "UTC" },
        { label: "orders / s" },
      ],
      series: [
        {},
        { label: "placed / s", stroke: "#2f6fdb", width: 3, points: { show: false } },
        { label: "invoiced / s", stroke: "#1e9e5a", width: 2, dash: [6, 4], points: { show: false } },
      ],
    }, chartData(data), box);
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }
  function drawLatest(orders) {
    const rows = orders.map((o) => {
      const tr = document.createElement("tr");
      tr.dataset.orderId = o.id;
      const id = cell(o.id.slice(0, 8), "mono");
      id.title = o.id;
      const status = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "badge " + o.status;
      badge.textContent = o.status;
      status.append(badge);
      tr.append(id, cell(o.customer_id), cell(money(o.amount_total) + " " + o.currency, "num"), status,
        cell(o.created_at.slice(11, 19)), cell(o.invoice_number || "", "mono"));
      return tr;
    });
    document.getElementById("latest").replaceChildren(...rows);
  }

  function draw(data) {
    for (const [field, format] of Object.entries(FORMATS)) {
      const el = root.querySelector(`[data-field="${field}"]`);
      if (el) el.textContent = format(data[field]);
    }
    drawLatest(data.latest);
    drawChart(data);
    updated.dataset.now = data.now;
    updated.textContent = "as of " + data.now.slice(11, 19) + " UTC";
    updated.parentElement.classList.remove("stale");
  }

  async function poll() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.status === 401) { window.location.assign(root.dataset.login); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      draw(await response.json());
    } catch (error) {
      updated.parentElement.classList.add("stale");
      updated.textContent = "not updated since " + (updated.dataset.now || "").slice(11, 19) + " UTC (" + error.message + ")";
    } finally {
      window.setTimeout(poll, pollMs);
    }
  }
  poll();
})();
