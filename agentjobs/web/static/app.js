// agentjobs dashboard: live updates over server-sent events, and the timeline's hover.
// No build step, no dependencies. Served from /static (the CSP allows no inline script).
(function () {
  "use strict";

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
