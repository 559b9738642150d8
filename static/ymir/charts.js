// Draws every chart on the page from the JSON beside its canvas (Chart.js, served locally): bar charts
// (one series per dataset or model) and line charts (precision-recall curves, training curves).
(function () {
  "use strict";
  var palette = ["#3f74d6", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#46a0a0", "#808000", "#000075"];
  function draw() {
    if (typeof Chart === "undefined") { return; }
    document.querySelectorAll("section.chart canvas").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      var source = document.getElementById(canvas.id.replace(/^chart-/, ""));
      if (!source) { return; }
      var spec = JSON.parse(source.textContent);
      var line = spec.type === "line";
      var y = { beginAtZero: true };
      if (spec.y_max !== undefined) { y.max = spec.y_max; } else if (!line) { y.ticks = { precision: 0 }; }
      new Chart(canvas, {
        type: line ? "line" : "bar",
        data: {
          labels: spec.labels,
          datasets: spec.series.map(function (s, i) {
            var colour = palette[i % palette.length];
            return { label: s.label, data: s.data, backgroundColor: colour, borderColor: colour,
                     pointRadius: line ? (spec.points ? 4 : 0) : undefined, spanGaps: true, fill: false };
          })
        },
        options: {
          animation: false,
          responsive: true,
          plugins: { legend: { display: spec.series.length > 1 } },
          scales: { y: y }
        }
      });
      canvas.dataset.drawn = "1";
    });
  }
  draw();
  document.addEventListener("htmx:afterSettle", draw);
})();
