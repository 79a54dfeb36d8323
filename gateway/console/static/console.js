/* The console's little script: forms over fetch with the CSRF header, live queue, shortcuts.
 * Every form also works without it (a plain POST with the hidden csrf_token field). */
(function () {
  "use strict";

  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var outcome = document.getElementById("outcome");
  var OUTCOME_KEY = "console-outcome";

  function show(message, ok) {
    if (!outcome) return;
    outcome.hidden = false;
    outcome.className = "outcome " + (ok ? "ok" : "error");
    outcome.setAttribute("role", ok ? "status" : "alert");
    outcome.textContent = message;
    outcome.scrollIntoView({block: "nearest"});
  }

  // An outcome carried over a reload (set just before it).
  try {
    var kept = sessionStorage.getItem(OUTCOME_KEY);
    if (kept) {
      sessionStorage.removeItem(OUTCOME_KEY);
      var parsed = JSON.parse(kept);
      show(parsed.message, parsed.ok);
    }
  } catch (e) { /* storage unavailable: the outcome is still in the server's answer */ }

  // Forms: POST with the CSRF header, show the outcome, keep the page on a refusal.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute || !form.hasAttribute("data-js")) return;
    event.preventDefault();
    var data = new FormData(form);
    var submitter = event.submitter;
    if (submitter && submitter.name) data.append(submitter.name, submitter.value);
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    form.setAttribute("aria-busy", "true");
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(data),
      credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "Accept": "application/json"}
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.status === 401) {
          window.location.assign("/console/login?next=" + encodeURIComponent(location.pathname));
          return;
        }
        if (response.ok) {
          try { sessionStorage.setItem(OUTCOME_KEY, JSON.stringify({message: body.message || "Done.", ok: true})); } catch (e) {}
          var next = body.next && body.next.indexOf("/console") === 0 ? body.next : null;
          if (next && next !== location.pathname + location.search) window.location.assign(next);
          else window.location.reload();
          return;
        }
        var message = body.error && body.error.message ? body.error.message : "The gateway answered HTTP " + response.status;
        show("Refused (" + response.status + "): " + message, false);
        buttons.forEach(function (b) { b.disabled = false; });
        form.removeAttribute("aria-busy");
      });
    }).catch(function (err) {
      show("Could not reach the gateway: " + err, false);
      buttons.forEach(function (b) { b.disabled = false; });
      form.removeAttribute("aria-busy");
    });
  });

  // Keyboard shortcuts: buttons with data-key, when no text field has focus.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var button = document.querySelector('button[data-key="' + CSS.escape(event.key) + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });

  // Ages tick without a reload.
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-created]").forEach(function (el) {
      var s = Math.max(0, Math.floor(now - parseFloat(el.getAttribute("data-created"))));
      var text = s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s"
        : s < 86400 ? Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m"
        : Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
      el.textContent = text;
    });
  }
  setInterval(tick, 5000);

  // Live updates over server-sent events.
  function listen(url, onEvent, onState) {
    if (!window.EventSource) return;
    var source = new EventSource(url);
    source.addEventListener("open", function () { onState("live"); });
    source.addEventListener("error", function () { onState(source.readyState === 2 ? "closed" : "reconnecting"); });
    source.addEventListener("queue", function (e) {
      try { onEvent(JSON.parse(e.data)); } catch (err) { /* a malformed event: ignore */ }
    });
    source.addEventListener("signed-out", function () {
      source.close();
      window.location.assign("/console/login");
    });
    return source;
  }

  var table = document.getElementById("queue");
  if (table) {
    var rows = document.getElementById("queue-rows");
    var count = document.getElementById("queue-n");
    var live = document.getElementById("live");
    var liveText = document.getElementById("live-text");
    var timer = null, inflight = false, again = false;
    var ids = function () {
      return Array.prototype.map.call(rows.querySelectorAll("tr[data-ticket]"), function (r) { return r.getAttribute("data-ticket"); });
    };
    // One fetch at a time; an event that arrives during a fetch triggers one more afterwards.
    var refresh = function () {
      if (inflight) { again = true; return; }
      if (timer) return;
      timer = setTimeout(load, 100);
    };
    var load = function () {
      timer = null;
      inflight = true;
      again = false;
      var before = ids();
      fetch(table.getAttribute("data-rows"), {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) {
          if (r.redirected || r.status === 401) { window.location.assign("/console/login?next=/console/review"); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html === null) return;
          rows.innerHTML = html;
          var now = ids();
          count.textContent = String(now.length);
          now.forEach(function (id) {
            if (before.indexOf(id) < 0) {
              var row = rows.querySelector('tr[data-ticket="' + CSS.escape(id) + '"]');
              if (row) row.classList.add("new");
            }
          });
        })
        .catch(function () { again = true; })
        .then(function () {
          inflight = false;
          if (again) refresh();
        });
    };
    listen(table.getAttribute("data-events"), refresh, function (state) {
      live.setAttribute("data-state", state);
      liveText.textContent = state === "live" ? "Live" : state === "closed" ? "Disconnected — reload" : "Reconnecting…";
      if (state === "live") refresh();  // catch up on anything missed while (re)connecting
    });
  }

  var ticket = document.getElementById("ticket");
  if (ticket) {
    var id = ticket.getAttribute("data-ticket");
    var news = document.getElementById("ticket-news");
    var busy = false;
    document.addEventListener("submit", function () { busy = true; }, true);
    listen(ticket.getAttribute("data-events"), function (e) {
      if (e.ticket !== id || busy) return;
      var what = {decided: "was decided", expired: "expired", claimed: "was claimed", released: "was released"}[e.event];
      if (!what) return;
      news.hidden = false;
      news.textContent = "";
      news.appendChild(document.createTextNode("This ticket " + what + (e.by ? " by " + e.by : "") + " meanwhile. "));
      var a = document.createElement("a");
      a.href = location.pathname;
      a.textContent = "Reload to see it";
      news.appendChild(a);
    }, function () {});
  }
})();
