// dbrouter console: every element with data-refresh="URL" is replaced by that
// URL's HTML every 2 seconds while the page is visible; when the fragment says
// it is finished (data-finished="true") the page is reloaded once, whole, and
// is no longer live. The pages work without
// this script; they are then as fresh as their last reload.
"use strict";
for (const el of document.querySelectorAll("[data-refresh]")) {
  const tick = async () => {
    if (!document.hidden) {
      try {
        const r = await fetch(el.dataset.refresh, { credentials: "same-origin" });
        // Sent to the login (the session ended): the whole page goes there.
        if (r.redirected) return location.reload();
        if (r.ok) el.innerHTML = await r.text();
      } catch (e) {
        // The console is restarting or the network blinked: try again later.
      }
      // Finished: once more, the whole page, for its tables too.
      if (el.querySelector('[data-finished="true"]')) return location.reload();
    }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}
