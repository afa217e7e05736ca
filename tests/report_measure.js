// Injected at the end of a report page by tests/test_report_layout.py, run by
// headless Chromium (--dump-dom): it measures what the browser laid out and
// writes the findings as JSON into a PRE element (id eh-measure) that --dump-dom
// hands back. Measured, not assumed: every SVG <text> and every HTML text
// line box, with the page's own fonts, at the window width the test chose.
(function () {
  "use strict";
  var EPS = 0.5;
  var out = {
    width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    svgs: 0,
    texts: 0,
    htmlTexts: 0,
    overlaps: [],
    clipped: [],
    small: [],
    htmlOverlaps: [],
    htmlClipped: [],
    hover: null,
  };
  // collapsed sections are measured too
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  out.scrollWidth = document.documentElement.scrollWidth;
  var vw = document.documentElement.clientWidth;
  function box(r) { return [Math.round(r.left * 10) / 10, Math.round(r.top * 10) / 10, Math.round(r.right * 10) / 10, Math.round(r.bottom * 10) / 10]; }
  function overlap(a, b) {
    return Math.min(a.right, b.right) - Math.max(a.left, b.left) > EPS &&
      Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > EPS;
  }
  function inside(a, b) {
    return a.left >= b.left - EPS && a.right <= b.right + EPS && a.top >= b.top - EPS && a.bottom <= b.bottom + EPS;
  }
  function limit(list, item) { if (list.length < 40) list.push(item); }

  document.querySelectorAll("svg").forEach(function (svg) {
    var sr = svg.getBoundingClientRect();
    if (!sr.width || !sr.height) return;
    out.svgs++;
    var name = svg.getAttribute("aria-label") || svg.getAttribute("class") || "svg";
    if (sr.left < -EPS || sr.right > vw + EPS) limit(out.clipped, { svg: name, text: "(the svg itself)", box: box(sr), vw: vw });
    var texts = [];
    svg.querySelectorAll("text").forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (r.width > 0 && r.height > 0 && t.textContent.trim()) texts.push({ t: t.textContent, r: r });
    });
    out.texts += texts.length;
    for (var i = 0; i < texts.length; i++) {
      var a = texts[i];
      if (!inside(a.r, sr)) limit(out.clipped, { svg: name, text: a.t, box: box(a.r), svgBox: box(sr) });
      if (a.r.height < 9) limit(out.small, { svg: name, text: a.t, height: a.r.height });
      for (var j = i + 1; j < texts.length; j++) {
        if (overlap(a.r, texts[j].r)) limit(out.overlaps, { svg: name, a: a.t, b: texts[j].t, boxA: box(a.r), boxB: box(texts[j].r) });
      }
    }
  });

  // HTML text: every line box of every text node outside SVG
  var rects = [];
  var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    var n = walker.currentNode;
    if (!n.data.trim()) continue;
    var p = n.parentElement;
    if (!p || p.closest("svg,script,style,#eh-tip")) continue;
    var range = document.createRange();
    range.selectNodeContents(n);
    var rs = range.getClientRects();
    for (var k = 0; k < rs.length; k++) {
      var r = rs[k];
      if (r.width > 0 && r.height > 0) rects.push({ t: n.data.trim().slice(0, 80), r: r });
    }
  }
  out.htmlTexts = rects.length;
  rects.forEach(function (a) {
    if (a.r.left < -EPS || a.r.right > vw + EPS) limit(out.htmlClipped, { text: a.t, box: box(a.r), vw: vw });
  });
  rects.sort(function (a, b) { return a.r.top - b.r.top; });
  for (var i2 = 0; i2 < rects.length; i2++) {
    for (var j2 = i2 + 1; j2 < rects.length && rects[j2].r.top < rects[i2].r.bottom; j2++) {
      if (overlap(rects[i2].r, rects[j2].r)) limit(out.htmlOverlaps, { a: rects[i2].t, b: rects[j2].t, boxA: box(rects[i2].r), boxB: box(rects[j2].r) });
    }
  }

  // hover: the time under the pointer, in clock time, on the first time chart
  var chart = document.querySelector("svg[data-t0]");
  var tip = document.getElementById("eh-tip");
  if (chart && tip) {
    var cr = chart.getBoundingClientRect();
    var vb = chart.viewBox.baseVal;
    var scale = cr.width / vb.width;
    var x0 = +chart.dataset.x0, x1 = +chart.dataset.x1;
    var xm = (x0 + x1) / 2;
    chart.scrollIntoView();
    cr = chart.getBoundingClientRect();
    var y = cr.top + cr.height / 2;
    chart.dispatchEvent(new MouseEvent("mousemove", { clientX: cr.left + xm * scale, clientY: y, bubbles: true }));
    var tr = tip.getBoundingClientRect();
    out.hover = {
      text: tip.textContent,
      visible: !tip.hidden && tr.width > 0,
      inViewport: tr.left >= -EPS && tr.right <= vw + EPS,
      t0: +chart.dataset.t0,
      t1: +chart.dataset.t1,
      secondsPerPx: (chart.dataset.t1 - chart.dataset.t0) / ((x1 - x0) * scale),
      guides: document.querySelectorAll("svg[data-t0] .guide:not([visibility=hidden])").length,
      charts: document.querySelectorAll("svg[data-t0]").length,
    };
  }
  var pre = document.createElement("pre");
  pre.id = "eh-measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
