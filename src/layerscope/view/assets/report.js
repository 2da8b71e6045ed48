(function () {
"use strict";
var D = JSON.parse(document.getElementById("data").textContent);
var byId = {}, state = {image: -1, layer: {}};
D.images.forEach(function (im, i) { byId[im.id] = i; });
var detail = document.getElementById("detail"), thumbs = document.getElementById("thumbs");
function esc(s) { return String(s).replace(/[&<>"']/g, function (c) {
  return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]; }); }
function fmt(v, m) {
  if (v === null || v === undefined) return "\u2013";
  return m.d ? v.toFixed(m.d) : String(+v.toPrecision(4));
}
var mi = D.metrics.map(function (m) { return m.name; }).indexOf(D.metric);
function outline(o, si, r, k, n, rows) {
  if (!o) return "";
  var vb = (k * o[0]) + " " + (r * o[1]) + " " + (n * o[0]) + " " + (rows * o[1]);
  var uses = "";
  for (var y = 0; y < rows; y++) for (var x = 0; x < n; x++)
    uses += '<use href="#ol' + si + '" x="' + ((k + x) * o[0]) + '" y="' + ((r + y) * o[1]) + '"/>';
  return '<svg class="ol" viewBox="' + vb + '" preserveAspectRatio="none">' + uses + "</svg>";
}
function sizes(S) {
  var K = S.names.length;
  return {K: K, L: S.layers.length, c: Math.max(16, Math.min(44, Math.floor(320 / K))),
          b: Math.max(36, Math.min(96, Math.floor(470 / K)))};
}
function block(si, e, im) {
  var S = D.series[si], z = sizes(S), K = z.K, L = z.L, c = z.c, h = "";
  var defs = im.o ? '<svg width="0" height="0" style="position:absolute"><defs><path id="ol' + si + '" d="' + im.o[2] +
    '" fill="none" stroke="#56B4E9" stroke-width="1.1" stroke-opacity="0.8" vector-effect="non-scaling-stroke"/>' +
    "</defs></svg>" : "";
  h += '<div class="sblock" data-s="' + si + '">' + defs + "<h3>" + esc(S.label) + "</h3>";
  h += '<div class="lctl"><button data-dl="-1" title="previous layer">\u25c0</button>' +
       '<input type="range" min="0" max="' + (L - 1) + '" value="0" data-s="' + si + '">' +
       '<button data-dl="1" title="next layer">\u25b6</button><span class="lname"></span></div>';
  h += '<div class="big maps"></div>';
  h += '<div class="g" style="grid-template-columns:32px ' + (K * c) + 'px"><div></div>' +
       '<div class="colh" style="grid-template-columns:repeat(' + K + ',1fr)">' +
       S.names.map(function (n) { return "<div>" + esc(n) + "</div>"; }).join("") + "</div>";
  h += '<div class="rowh" style="grid-template-rows:repeat(' + L + ',1fr)">' +
       S.layers.map(function (l) { return "<div>L" + l + "</div>"; }).join("") + "</div>";
  h += '<div class="gwrap maps" style="width:' + (K * c) + "px;height:" + (L * c) + 'px">' +
       '<img class="sprite" loading="lazy" src="' +
       esc(e.g) + '" alt="layer x head grid">' + outline(im.o, si, 0, 0, K, L) +
       '<div class="cells" style="grid-template-columns:repeat(' + K + ",1fr);" +
       "grid-template-rows:repeat(" + L + ',1fr)">';
  for (var r = 0; r < L; r++) for (var k = 0; k < K; k++)
    h += '<div class="gc" data-r="' + r + '" data-k="' + k + '" title="' + esc(tip(S, e, r, k)) + '"></div>';
  h += "</div></div></div>";
  h += '<div class="info">hover a map for its metrics</div>';
  var top = D.metrics.map(function (m, j) {  // each column's best value, bold (not when all maps tie)
    var best = null, seen = {};
    e.v.forEach(function (v) { if (v && v[j] !== null) { seen[v[j]] = 1;
      if (best === null || (m.lo ? v[j] < best : v[j] > best)) best = v[j]; } });
    return Object.keys(seen).length > 1 ? best : null;
  });
  h += '<div class="tbl"><table class="maptable"><thead><tr><th>layer</th><th>map</th>' +
       D.metrics.map(function (m) { return "<th>" + esc(m.title) + "</th>"; }).join("") + "</tr></thead><tbody>";
  for (r = 0; r < L; r++) for (k = 0; k < K; k++) {
    var v = e.v[r * K + k];
    h += '<tr data-r="' + r + '" data-k="' + k + '"><td>' + S.layers[r] + "</td><td>" + esc(S.names[k]) + "</td>" +
         D.metrics.map(function (m, j) { var x = v ? v[j] : null;
           return "<td" + (x !== null && x === top[j] ? ' class="top"' : "") + ">" + fmt(x, m) + "</td>";
         }).join("") + "</tr>";
  }
  return h + "</tbody></table></div></div>";
}
function tip(S, e, r, k) {
  var v = e.v[r * S.names.length + k], t = "layer " + S.layers[r] + " \u00b7 " + S.names[k];
  if (!v) return t + ": no metrics";
  return t + ": " + D.metrics.map(function (m, j) { return m.title + " " + fmt(v[j], m); }).join(" \u00b7 ");
}
function setLayer(si, r) {
  var S = D.series[si], box = detail.querySelector('.sblock[data-s="' + si + '"]');
  if (!box) return;
  var z = sizes(S), L = z.L, K = z.K, b = z.b, im = D.images[state.image], e = im.s[si];
  r = Math.max(0, Math.min(L - 1, r)); state.layer[si] = r;
  box.querySelector("input[type=range]").value = r;
  box.querySelector(".lname").textContent = "layer " + S.layers[r] + " \u00b7 depth " + S.depth[r].toFixed(2) +
    " (" + (r + 1) + " of " + L + " saved)";
  var h = "";
  for (var k = 0; k < K; k++) {
    var v = e.v[r * K + k], val = v && mi >= 0 ? fmt(v[mi], D.metrics[mi]) : "";
    h += '<div class="bc" title="' + esc(tip(S, e, r, k)) + '" style="width:' + b + "px;height:" + b + "px;" +
         "background-image:url('" + e.g + "');background-size:" + (K * b) + "px " + (L * b) + "px;" +
         "background-position:-" + (k * b) + "px -" + (r * b) + 'px">' + outline(im.o, si, k, r, 1, 1) +
         '<span class="cap">' + esc(S.names[k]) + (val ? " \u00b7 " + val : "") + "</span></div>";
  }
  box.querySelector(".big").innerHTML = h;
  box.querySelectorAll(".rowh div").forEach(function (d, i) { d.classList.toggle("on", i === r); });
  box.querySelectorAll(".gc").forEach(function (d) { d.classList.toggle("on", +d.dataset.r === r); });
  box.querySelectorAll(".maptable tr[data-r]").forEach(function (d) { d.classList.toggle("on", +d.dataset.r === r); });
}
function select(id, scroll) {
  var i = byId[id];
  if (i === undefined) return false;
  state.image = i;
  var im = D.images[i];
  thumbs.querySelectorAll(".th").forEach(function (t) { t.classList.toggle("sel", t.dataset.id === id); });
  var h = '<div class="dhead"><figure class="input"><div class="stack"><img src="' + esc(im.input) + '" alt="input">' +
       (im.o ? '<svg class="ol" viewBox="0 0 ' + im.o[0] + " " + im.o[1] + '" preserveAspectRatio="none">' +
               '<path d="' + im.o[2] + '"/></svg>' : "") +
       '</div></figure><div><div class="dtitle"><button data-step="-1" title="previous image">\u25c0</button>' +
       "<b>" + esc(im.id) +
       "</b>" + (im.cat ? '<span class="cat">' + esc(im.cat) + "</span>" : "") +
       '<button data-step="1" title="next image">\u25b6</button></div>' +
       '<p class="note">input' + (im.o ? " with the mask outline" : ", no mask") +
       "; per model \u00b7 method: the maps of one layer (slider, buttons or \u2190 \u2192), every layer x map below " +
       "(click a row to pick its layer, hover a map for its metrics), each map's metrics in the table; " +
       "maps are min-max " +
       "scaled one by one, on their own grid.</p></div></div>" + '<div class="dbody">';
  Object.keys(im.s).forEach(function (si) { h += block(+si, im.s[si], im); });
  detail.innerHTML = h + "</div>";
  detail.setAttribute("data-image", id);
  Object.keys(im.s).forEach(function (si) {
    var S = D.series[si], r = state.layer[si];
    setLayer(+si, r !== undefined ? r : (S.best ? S.best[0] : S.layers.length - 1));
  });
  var sel = thumbs.querySelector(".th.sel");  // into view inside the list only, never scrolling the page
  if (sel && (sel.offsetTop < thumbs.scrollTop ||
              sel.offsetTop + sel.offsetHeight > thumbs.scrollTop + thumbs.clientHeight))
    thumbs.scrollTop = sel.offsetTop - thumbs.offsetTop - 8;
  var gal = document.getElementById("gallery");  // scroll to the images only when they are out of sight
  if (scroll && gal.getBoundingClientRect().top > 0.6 * window.innerHeight) gal.scrollIntoView();
  return true;
}
function fromHash(scroll) {
  var p = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var i = kv.indexOf("="); if (i > 0) p[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); });
  if (p.layer !== undefined) D.series.forEach(function (S, si) {
    var r = S.layers.indexOf(+p.layer);
    if (r >= 0) state.layer[si] = r;
  });
  return p.image !== undefined && select(p.image, scroll);
}
function go(id) {
  select(id, false);
  var hash = "#image=" + encodeURIComponent(id);  // the address names the image (a link to share, a reload keeps it)
  try { history.replaceState(null, "", hash); } catch (err) { location.hash = hash; }
}
if (thumbs) {
  thumbs.addEventListener("click", function (ev) {
    var a = ev.target.closest(".th"); if (!a) return;
    ev.preventDefault(); go(a.dataset.id);
  });
  detail.addEventListener("click", function (ev) {
    var t = ev.target, box = t.closest(".sblock");
    if (t.dataset.step) {
      var vis = [].filter.call(thumbs.querySelectorAll(".th"), function (a) { return a.style.display !== "none"; });
      var j = vis.findIndex(function (a) { return a.dataset.id === D.images[state.image].id; }) + +t.dataset.step;
      if (vis.length) go(vis[(j + vis.length) % vis.length].dataset.id);
    } else if (t.dataset.dl && box) { setLayer(+box.dataset.s, state.layer[box.dataset.s] + +t.dataset.dl); }
    else if (t.classList.contains("gc") && box) { setLayer(+box.dataset.s, +t.dataset.r); }
  });
  detail.addEventListener("input", function (ev) {
    if (ev.target.dataset.s) setLayer(+ev.target.dataset.s, +ev.target.value);
  });
  detail.addEventListener("mouseover", function (ev) {
    var t = ev.target, box = t.closest(".sblock");
    if (!box || !(t.classList.contains("gc") || t.classList.contains("bc"))) return;
    box.querySelector(".info").textContent = t.title;
    var r = t.dataset.r, k = t.dataset.k;
    if (t.classList.contains("bc")) { r = state.layer[box.dataset.s]; k = [].indexOf.call(t.parentNode.children, t); }
    box.querySelectorAll("tr.hot").forEach(function (x) { x.classList.remove("hot"); });
    var row = box.querySelector('tr[data-r="' + r + '"][data-k="' + k + '"]');
    if (row) {
      row.classList.add("hot");
      var tb = row.closest(".tbl");
      tb.scrollTop = row.offsetTop - tb.clientHeight / 2;
    }
  });
  document.getElementById("catsel").addEventListener("change", function (ev) {
    var c = ev.target.value;
    thumbs.querySelectorAll(".th").forEach(function (a) {
      a.style.display = c === "*" || a.dataset.cat === c ? "" : "none";
    });
  });
  document.getElementById("olsel").addEventListener("change", function (ev) {
    document.body.classList.toggle("no-ol", !ev.target.checked); });
  document.addEventListener("keydown", function (ev) {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT" || state.image < 0) return;
    var d = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
    if (d) Object.keys(D.images[state.image].s).forEach(function (si) { setLayer(+si, state.layer[si] + d); });
  });
  window.addEventListener("hashchange", function () { fromHash(true); });
}
document.querySelectorAll("table.heat td[data-s]").forEach(function (td) {
  td.addEventListener("click", function () {
    var si = +td.dataset.s, S = D.series[si]; if (!S) return;
    var r = S.layers.indexOf(+td.dataset.layer); if (r < 0) return;
    state.layer[si] = r;
    if (state.image >= 0) setLayer(si, r);
    document.getElementById("gallery").scrollIntoView();
  });
});
document.querySelectorAll("input[name=depth]").forEach(function (x) {
  x.addEventListener("change", function () {
    document.body.classList.toggle("rel", x.value === "relative" && x.checked);
  });
});
if (D.images.length && !fromHash(true)) select(D.images[0].id, false);
document.body.setAttribute("data-ready-ms", Math.round(performance.now()));
})();
