// Draws the listener's traffic charts from /api/v1/listeners/NAME/metrics and refreshes them.
(function () {
  "use strict";
  const box = document.querySelector(".charts[data-metrics]");
  if (!box || typeof Chart === "undefined") return;
  const charts = {};
  const format = (t) => new Date(t * 1000).toLocaleTimeString();
  async function refresh() {
    let data;
    try {
      const response = await fetch(box.dataset.metrics, { credentials: "same-origin" });
      if (!response.ok) return;
      data = await response.json();
    } catch (e) { return; }
    for (const [name, points] of Object.entries(data.series)) {
      const canvas = document.getElementById("chart-" + name);
      if (!canvas) continue;
      const labels = points.map((p) => format(p.t));
      const values = points.map((p) => p.value);
      canvas.dataset.points = String(points.length);
      if (charts[name]) {
        charts[name].data.labels = labels;
        charts[name].data.datasets[0].data = values;
        charts[name].update("none");
      } else {
        charts[name] = new Chart(canvas, {
          type: "line",
          data: { labels, datasets: [{ label: name.replaceAll("_", " "), data: values, borderColor: "#2456c7",
                                       backgroundColor: "rgba(36,86,199,.12)", fill: true, pointRadius: 0, tension: .25 }] },
          options: { animation: false, responsive: true, maintainAspectRatio: false,
                     plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
        });
      }
    }
    box.dataset.loaded = "true";
  }
  refresh();
  setInterval(refresh, 10000);
})();
