// agentjobs dashboard: live updates over server-sent events, and the timeline's hover.
// No build step, no dependencies. Served from /static (the CSP allows no inline script).
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";

  function when(epoch) {
    return new Date(epoch * 1000).toLocaleString();
  }

  function seconds(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return Math.round(s * 1000) + "ms";
    var out = [], left = Math.round(s);
    [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]].forEach(function (u) {
      if (left >= u[1]) { out.push(Math.floor(left / u[1]) + u[0]); left %= u[1]; }
    });
    return out.slice(0, 2).join("");
  }

  function rect(x, y, w, h, cls, title) {
    var r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", x); r.setAttribute("y", y);
    r.setAttribute("width", w); r.setAttribute("height", h);
    r.setAttribute("class", cls);
    var t = document.createElementNS(SVG, "title");
    t.textContent = title;  // text, never markup
    r.appendChild(t);
    return r;
  }

  // Draw the timeline's bars and bands from the JSON the server put beside it (geometry
  // included: the server decides where each bar goes; this only makes the elements).
  function draw(root) {
    root.querySelectorAll(".timeline").forEach(function (box) {
      var source = box.querySelector("script.timeline-data");
      if (!source) return;
      var data = JSON.parse(source.textContent);
      var svgs = box.querySelectorAll(".lane svg.lane-svg");
      data.lanes.forEach(function (lane, i) {
        var svg = svgs[i], now = svg.querySelector("line.now"), frag = document.createDocumentFragment();
        lane.bands.forEach(function (b) {
          var r = rect(b[0], b[2], b[1], b[3], "band band-" + b[4], b[5] + ": " + when(b[6]) + " to " + when(b[7]));
          frag.appendChild(r);
        });
        lane.bars.forEach(function (b) {
          var job = data.jobs[b[6]];
          var title = b[11] > 1
            ? b[11] + " attempts (" + job + "), worst " + b[5] + ": " + when(b[7]) + " to " + when(b[8])
            : job + " run " + b[3] + " attempt " + b[4] + ": " + b[5]
              + (b[9] !== null ? " in " + seconds(b[9]) : "")
              + (b[10] !== null ? ", $" + b[10].toFixed(4) : "")
              + " (" + when(b[7]) + " to " + when(b[8]) + ")";
          var r = rect(b[0], b[2], b[1], data.bar, "bar " + (data.classes[b[5]] || ""), title);
          r.setAttribute("data-run", b[3]);
          r.setAttribute("data-attempt", b[4]);
          r.setAttribute("data-attempts", b[11]);
          if (b[11] === 1) {
            var a = document.createElementNS(SVG, "a");
            a.setAttribute("href", "/runs/" + encodeURIComponent(b[3]));
            a.appendChild(r);
            frag.appendChild(a);
          } else {
            frag.appendChild(r);
          }
        });
        svg.insertBefore(frag, now);
      });
    });
  }

  // Highlight every attempt of the run under the pointer (its bars and queue waits).
  function hover(root) {
    root.querySelectorAll(".timeline rect.bar").forEach(function (bar) {
      bar.addEventListener("mouseenter", function () {
        var run = bar.getAttribute("data-run");
        root.querySelectorAll('.timeline rect[data-run="' + CSS.escape(run) + '"]').forEach(function (el) {
          el.classList.add("hl");
        });
      });
      bar.addEventListener("mouseleave", function () {
        root.querySelectorAll(".timeline rect.hl").forEach(function (el) { el.classList.remove("hl"); });
      });
    });
  }
  draw(document);
  hover(document);

  var body = document.body;
  if (!body.hasAttribute("data-live") || !window.EventSource || !window.fetch) return;
  var status = document.getElementById("live-status");
  var pending = null;
  var busy = false;

  function say(text, on) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("on", !!on);
  }

  // Re-render the page's main part from the server (the same HTML a reload gives), unless
  // the user is typing or has text selected.
  function refresh() {
    pending = null;
    if (busy) { pending = setTimeout(refresh, 500); return; }
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA")) return;
    if (String(window.getSelection && window.getSelection()).length) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Live": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        var main = document.getElementById("live");
        if (fresh && main) {
          main.innerHTML = fresh.innerHTML;
          draw(main);
          hover(main);
        }
        if (!doc.body.hasAttribute("data-live")) { source.close(); say("finished", false); }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }

  var source = new EventSource("/api/events");
  source.onopen = function () { say("live", true); };
  source.onerror = function () { say("reconnecting", false); };
  ["queued", "started", "finished", "dead_lettered", "held", "released"].forEach(function (kind) {
    source.addEventListener(kind, function (event) {
      var change = {};
      try { change = JSON.parse(event.data); } catch (e) { /* keep going */ }
      say(kind.replace("_", " ") + (change.job ? ": " + change.job : ""), true);
      if (!pending) pending = setTimeout(refresh, 300);
    });
  });
})();
