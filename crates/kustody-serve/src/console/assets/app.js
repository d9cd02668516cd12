// kustody console: progressive enhancement only; every page works without it.
"use strict";
(function () {
  // Live incident list: refresh the table when the server publishes a change.
  var table = document.getElementById("incidents");
  if (table && window.EventSource) {
    var pending = null;
    var refresh = function () {
      pending = null;
      fetch(window.location.href, { credentials: "same-origin", headers: { "X-Kustody-Partial": "1" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("incidents");
          if (fresh) { table.replaceWith(fresh); table = fresh; }
          var mark = document.getElementById("live");
          if (mark) { mark.textContent = "live · updated " + new Date().toLocaleTimeString(); }
        });
    };
    var es = new EventSource("/v1/findings/stream");
    es.addEventListener("finding", function () {
      if (!pending) { pending = setTimeout(refresh, 300); }
    });
  }
  // Actions still planned or running: refresh their table until they are done.
  var box = document.querySelector("[data-refresh]");
  if (box) {
    var every = 1000 * parseFloat(box.getAttribute("data-refresh"));
    var poll = function () {
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { setTimeout(poll, every); return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(box.id);
          var badge = doc.getElementById("quarantined");
          var h1 = document.querySelector("h1");
          if (badge && h1 && !document.getElementById("quarantined")) { h1.appendChild(badge); }
          if (fresh) { box.replaceWith(fresh); box = fresh; }
          if (box.hasAttribute("data-refresh")) { setTimeout(poll, every); }
        });
    };
    setTimeout(poll, every);
  }
  // Ask before a response action that changes the cluster.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) {
      if (!window.confirm(f.getAttribute("data-confirm"))) { e.preventDefault(); }
    });
  });
})();
