// INCloud home page: fill each module tile with live status from the INCloud API, acting as the viewing user.
// A hidden frame opens the API's /portal page (a navigation, so the API's own OAuth session with the hub applies;
// the first visit goes through the hub's OAuth handshake without a prompt); that page hands the status to this
// window with postMessage, which is only accepted from this origin and from that frame. Never sends a token.
(function () {
  "use strict";
  var home = document.querySelector(".ic-home");
  if (!home) return;
  var frame = document.createElement("iframe");
  frame.hidden = true;
  frame.title = "INCloud status";
  frame.src = home.getAttribute("data-api") + "portal";
  var timer = window.setTimeout(function () { fail("status unavailable (the INCloud API did not answer)"); }, 20000);

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleDateString(undefined, { day: "numeric", month: "short" });
  }
  function stats(pairs) {
    var box = el("div", "ic-stats");
    pairs.forEach(function (p) {
      var s = el("div", "ic-stat");
      s.appendChild(el("b", "", String(p[0])));
      s.appendChild(el("span", "", p[1]));
      box.appendChild(s);
    });
    return box;
  }
  function qcBadge(status) {
    return el("span", "ic-qc ic-qc-" + status, status);
  }
  Array.prototype.forEach.call(document.querySelectorAll(".ic-api-url"), function (e) {
    e.textContent = window.location.origin + e.textContent;
  });
  var render = {
    archive: function (a) {
      var out = [stats([[a.projects, "projects"], [a.participants, "participants"], [a.series, "series"]])];
      if (a.last_arrivals.length) {
        out.push(el("p", "ic-note", "Last arrivals"));
        var ul = el("ul", "ic-list");
        a.last_arrivals.forEach(function (s) {
          var li = el("li");
          var what = el("span", "", s.project + " · sub-" + s.participant + " · " + s.suffix);
          what.appendChild(qcBadge(s.qc_status));
          li.appendChild(what);
          li.appendChild(el("span", "ic-when", when(s.created_at)));
          ul.appendChild(li);
        });
        out.push(ul);
      } else {
        out.push(el("p", "ic-note", "No series you may see yet."));
      }
      return out;
    },
    qc: function (q) {
      return [stats([[q.waiting, "series waiting"], [q.failed, "failed"]])];
    },
    processing: function (p) {
      var out = [stats([[p.running, "runs going"], [p.failed, "with failed inputs"]])];
      if (p.last_runs.length) {
        var ul = el("ul", "ic-list");
        p.last_runs.forEach(function (r) {
          var li = el("li");
          li.appendChild(el("span", "", "#" + r.run + " " + r.pipeline + " " + r.version + " · " + r.project));
          li.appendChild(el("span", "ic-when", r.state + " · " + r.done + "/" + r.total +
                            (r.failed ? " · " + r.failed + " failed" : "")));
          ul.appendChild(li);
        });
        out.push(ul);
      } else {
        out.push(el("p", "ic-note", "No runs yet: client.run(\"qc\", project=...) in a notebook."));
      }
      return out;
    },
    reports: function (r) {
      return [stats([[r.scans, "scans with a report you may open"], [r.model ? "v" + r.model : "–", "model"]])];
    },
    upload: function (u) {
      var out = [stats([[u.uploads, "studies you uploaded"]])];
      if (u.last.length) {
        var ul = el("ul", "ic-list");
        u.last.forEach(function (x) {
          var li = el("li");
          li.setAttribute("data-upload-state", x.state);
          var steps = x.steps.filter(function (s) { return s.name !== "archived"; })
            .map(function (s) { return s.name + " " + (s.state === "review" ? "waiting for QC review" : s.state); });
          li.appendChild(el("span", "", x.project + " · " + x.series + " series · " + x.state +
                            (steps.length ? " · " + steps.join(", ") : "")));
          li.appendChild(el("span", "ic-when", when(x.created)));
          ul.appendChild(li);
        });
        out.push(ul);
      } else {
        out.push(el("p", "ic-note", "No uploads yet."));
      }
      return out;
    },
    reservation: function (r) {
      return [stats([[r.upcoming, "upcoming bookings of yours"], [r.to_approve, "waiting for your approval"]])];
    },
    features: function (f) {
      return [stats([[f.projects, "projects whose features you may list"]]),
              el("p", "ic-note", "Counts cover every project; rows only those you may list.")];
    },
    workshops: function (w) {
      var out = [];
      function list(title, items, teacher) {
        out.push(el("p", "ic-note", title));
        var ul = el("ul", "ic-list");
        items.forEach(function (x) {
          var li = el("li");
          li.setAttribute("data-workshop", x.code);
          li.appendChild(el("span", "", x.title + " · " + x.dataset + (teacher ? " · " + x.students + "/" + x.size +
                                                                          " students" : "")));
          li.appendChild(el("span", "ic-when", x.state + " · until " + x.ends_on));
          ul.appendChild(li);
        });
        out.push(ul);
      }
      if (w.teaching.length) list("Workshops you teach", w.teaching, true);
      if (w.attending.length) list("Your workshop (its notebooks are in Workshop/ in your workstation)",
                                   w.attending, false);
      if (!w.teaching.length && !w.attending.length) {
        out.push(el("p", "ic-note", w.may_teach ? "No workshops yet: incloud workshop create, or POST " +
                                                  "api/workshops." : "You are in no workshop."));
      }
      return out;
    },
    health: function (h) {
      var out = [];
      var svc = el("p", "ic-status");
      Object.keys(h.services).forEach(function (name) {
        var s = el("span", "ic-svc");
        s.appendChild(el("span", "ic-dot " + (h.services[name] ? "ic-ok" : "ic-bad")));
        s.appendChild(document.createTextNode(name + "  "));
        svc.appendChild(s);
      });
      out.push(svc);
      h.disk.forEach(function (d) {
        var p = el("p", "ic-note", d.what + " disk: " + d.free_gb + " GB free of " + d.total_gb + " GB");
        var bar = el("div", "ic-bar");
        var fill = el("span");
        fill.style.width = d.used_percent + "%";
        bar.appendChild(fill);
        p.appendChild(bar);
        out.push(p);
      });
      var q = h.queues;
      var pairs = [[q.quarantine === null ? "–" : q.quarantine, "in quarantine"],
                   [q.spool === null ? "–" : q.spool, "in the spool"]];
      if (q.slurm) pairs.push([q.slurm.running + " / " + q.slurm.pending, "jobs running / pending"]);
      out.push(stats(pairs));
      return out;
    },
  };
  function fill(status) {
    document.querySelectorAll("[data-live]").forEach(function (box) {
      var key = box.getAttribute("data-live");
      box.textContent = "";
      if (!status[key] || !render[key]) {
        box.appendChild(el("p", "ic-status ic-muted", "no status"));
        return;
      }
      render[key](status[key]).forEach(function (node) { box.appendChild(node); });
    });
    home.setAttribute("data-status", "ready");
  }
  function fail(message) {
    document.querySelectorAll("[data-live] .ic-loading").forEach(function (p) { p.textContent = message; });
    home.setAttribute("data-status", "failed");
  }
  window.addEventListener("message", function (event) {
    if (event.origin !== window.location.origin || event.source !== frame.contentWindow) return;
    if (!event.data || event.data.incloud !== "portal-status") return;
    window.clearTimeout(timer);
    fill(event.data.status);
    frame.remove();
  });
  document.body.appendChild(frame);
})();
