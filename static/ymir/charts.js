// Draws every analysis chart on the page: bar charts, one series per dataset (Chart.js, served locally).
(function () {
  "use strict";
  var palette = ["#3f74d6", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#46a0a0"];
  function draw() {
    if (typeof Chart === "undefined") { return; }
    document.querySelectorAll("section.chart canvas").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      var source = document.getElementById(canvas.id.replace(/^chart-/, ""));
      if (!source) { return; }
      var spec = JSON.parse(source.textContent);
      new Chart(canvas, {
        type: "bar",
        data: {
          labels: spec.labels,
          datasets: spec.series.map(function (s, i) {
            return { label: s.label, data: s.data, backgroundColor: palette[i % palette.length] };
          })
        },
        options: {
          animation: false,
          responsive: true,
          plugins: { legend: { display: spec.series.length > 1 } },
          scales: { y: { beginAtZero: true, ticks: { precision: 0 } } }
        }
      });
      canvas.dataset.drawn = "1";
    });
  }
  draw();
  document.addEventListener("htmx:afterSettle", draw);
})();
