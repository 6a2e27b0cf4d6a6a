// Draws the listener's traffic charts from /api/v1/listeners/NAME/metrics and refreshes them.
// Each canvas names the series it draws in data-series (the first one is the main line).
(function () {
  "use strict";
  const box = document.querySelector(".charts[data-metrics]");
  if (!box || typeof Chart === "undefined") return;
  const charts = {};
  const colours = ["#2456c7", "#1f8a4c", "#c78a24", "#c72c24"];
  const format = (t) => new Date(t * 1000).toLocaleTimeString();
  async function refresh() {
    let data;
    try {
      const response = await fetch(box.dataset.metrics, { credentials: "same-origin" });
      if (!response.ok) return;
      data = await response.json();
    } catch (e) { return; }
    for (const canvas of box.querySelectorAll("canvas[data-series]")) {
      const names = canvas.dataset.series.split(",");
      const datasets = names.map((name, i) => ({
        label: name.replaceAll("_", " "),
        data: (data.series[name] || []).map((p) => ({ x: p.t, y: p.value })),
        borderColor: colours[i % colours.length],
        backgroundColor: i === 0 ? "rgba(36,86,199,.12)" : "transparent",
        fill: i === 0, pointRadius: 0, tension: .25,
      }));
      canvas.dataset.points = String(Math.max(...datasets.map((d) => d.data.length)));
      const chart = charts[canvas.id];
      if (chart) {
        chart.data.datasets.forEach((d, i) => { d.data = datasets[i].data; });
        chart.update("none");
        continue;
      }
      charts[canvas.id] = new Chart(canvas, {
        type: "line",
        data: { datasets },
        options: { animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
                   plugins: { legend: { display: names.length > 1, labels: { boxWidth: 12 } } },
                   scales: { x: { type: "linear", ticks: { callback: format, maxTicksLimit: 6 } },
                             y: { beginAtZero: true } } },
      });
    }
    box.dataset.loaded = "true";
  }
  refresh();
  setInterval(refresh, 10000);
})();
