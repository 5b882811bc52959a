/// The console's stylesheet and script, served from the node itself (its content security policy allows
/// nothing from elsewhere and nothing inline).
enum ConsoleAssets {
    /// A baton, for the browser's tab.
    static let icon = """
        <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#0f172a"/>\
        <path d="M3 13 L13 3" stroke="#60a5fa" stroke-width="2.5" stroke-linecap="round"/></svg>
        """

    static let stylesheet = """
        :root { color-scheme: light; --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --accent: #1d4ed8; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--ink); background: #f8fafc; }
        header { display: flex; gap: 1.5rem; align-items: baseline; padding: .7rem 1.5rem; background: #0f172a; }
        header a, header span { color: #e2e8f0; text-decoration: none; }
        header .brand { font-weight: 700; color: #fff; }
        header nav { display: flex; gap: 1rem; margin-left: auto; }
        main { padding: 1rem 1.5rem 3rem; max-width: 1400px; }
        h1 { font-size: 1.4rem; margin: .4rem 0 1rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
        table { border-collapse: collapse; background: #fff; width: 100%; }
        th, td { text-align: left; vertical-align: top; padding: .35rem .6rem; border-bottom: 1px solid var(--line); }
        th { font-weight: 600; background: #f1f5f9; }
        code, pre, small { font-family: ui-monospace, monospace; }
        small { color: var(--muted); }
        pre.json { background: #fff; border: 1px solid var(--line); padding: .6rem; overflow: auto; max-height: 24rem; }
        ul.issued, ul.timers { margin: 0; padding-left: 1rem; }
        .counts { display: flex; flex-wrap: wrap; gap: .5rem; margin-bottom: 1rem; align-items: center; }
        .as-of { margin-left: .5rem; }
        .count { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .4rem .8rem;
          text-decoration: none; color: var(--ink); }
        .count b { font-size: 1.1rem; margin-right: .3rem; }
        .filter, .actions form { display: flex; flex-wrap: wrap; gap: .8rem; align-items: end; margin: .6rem 0; }
        label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); gap: .15rem; }
        input, select, button { font: inherit; padding: .3rem .5rem; }
        button { background: var(--accent); color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
        button.danger { background: #b91c1c; }
        form.inline { display: flex; gap: .4rem; align-items: end; }
        .lifecycle { padding: .05rem .45rem; border-radius: 999px; background: #e2e8f0; font-size: .85rem; }
        .lifecycle.completed { background: #dcfce7; } .lifecycle.failed { background: #fee2e2; }
        .lifecycle.compensating { background: #fef3c7; } .lifecycle.running, .lifecycle.started { background: #dbeafe; }
        .notice { background: #ecfdf5; border: 1px solid #a7f3d0; padding: .5rem .8rem; }
        .problem { background: #fef2f2; border: 1px solid #fecaca; padding: .5rem .8rem; }
        .muted, .empty { color: var(--muted); }
        .diagram { overflow-x: auto; } .diagram svg { background: #fff; border: 1px solid var(--line); }
        .crumbs { margin: 0; color: var(--muted); }
        dl.letter { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }
        dl.letter dt { color: var(--muted); }
        """

    /// Keeps the page's live parts current while it is watched: every two seconds it fetches the page again and
    /// replaces each part marked `data-live` whose markup changed since the last fetch (so what a reader opened
    /// stays open until the content itself changes). Without JavaScript the page is the same, only still.
    static let script = """
        "use strict";
        (function () {
          var parts = document.querySelectorAll("[data-live][id]");
          if (parts.length === 0) { return; }
          var seen = {};
          parts.forEach(function (part) { seen[part.id] = part.innerHTML; });
          var busy = false;
          function refresh() {
            if (busy || document.hidden) { return; }
            busy = true;
            fetch(window.location.href, { headers: { "X-Baton-Console": "refresh" }, cache: "no-store" })
              .then(function (response) { return response.ok ? response.text() : null; })
              .then(function (text) {
                if (text === null) { return; }
                var fresh = new DOMParser().parseFromString(text, "text/html");
                parts.forEach(function (part) {
                  var next = fresh.getElementById(part.id);
                  if (next && next.innerHTML !== seen[part.id]) {
                    seen[part.id] = next.innerHTML;
                    part.innerHTML = next.innerHTML;
                  }
                });
              })
              .catch(function () { /* the service may be restarting: the next tick tries again */ })
              .then(function () { busy = false; });
          }
          window.setInterval(refresh, 2000);
        })();
        """
}
