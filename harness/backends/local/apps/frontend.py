"""Stand-in for ``hashicorpdemoapp/frontend`` (the Next.js shop page).

The real image serves the shop's page on port 3000 and the browser then asks
the public API, at ``NEXT_PUBLIC_PUBLIC_API_URL`` (``/`` behind the pod's
nginx), for the coffees. The harness's traffic only needs the page to load
and to name HashiCups, so this serves one static page quickly; the data path
is exercised through ``/api``.

Configuration, as the real image: ``PORT`` (Next.js, default 3000) and
``NEXT_PUBLIC_PUBLIC_API_URL``. Local convention: ``EH_BIND_HOST``.
Run: ``python -m harness.backends.local.apps.frontend``.
"""

from __future__ import annotations

import html
import json
import os
import sys

from harness.backends.local.apps._http import Handler, Listener, Reply, Request, bind_host_default, log, serve

APP = "frontend"
# Next.js 12 `next start` on node 16 sets no keep-alive timeout of its own: node's http.Server closes a
# connection idle for keepAliveTimeout, 5 s by default
IDLE_TIMEOUT_S = 5.0

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>HashiCups - Demo App</title>
<meta name="description" content="HashiCups: the HashiCorp demo coffee shop">
</head>
<body>
<h1>HashiCups</h1>
<p>Coffee for every mesh.</p>
<ul id="coffees"></ul>
<script>
const api = {api_url};
fetch(api.replace(/\\/?$/, "/") + "api", {{
  method: "POST",
  headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{query: "{{ coffees {{ id name price }} }}"}})
}}).then(r => r.json()).then(r => {{
  const ul = document.getElementById("coffees");
  for (const c of (r.data && r.data.coffees) || []) {{
    const li = document.createElement("li");
    li.textContent = c.name + " - $" + c.price;
    ul.appendChild(li);
  }}
}});
</script>
<!-- public API: {api_comment} -->
</body>
</html>
"""


def make_handler(api_url: str) -> Handler:
    """Build the page once: it depends only on start-up configuration."""
    page = _PAGE.format(api_url=json.dumps(api_url), api_comment=html.escape(api_url)).encode()
    ok = Reply(200, page, "text/html; charset=utf-8")
    not_found = Reply(404, b"<!DOCTYPE html><title>404: This page could not be found</title>\n", "text/html")

    def handle(req: Request) -> Reply:
        if req.method not in ("GET", "HEAD"):
            return Reply(405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")])
        return ok if req.path in ("/", "/index.html") else not_found

    return handle


def main() -> int:
    """Serve the page on ``PORT`` until SIGTERM."""
    port_text = os.environ.get("PORT", "3000").strip() or "3000"
    if not port_text.isdigit():
        log(APP, "invalid PORT", value=port_text)
        return 1
    handle = make_handler(os.environ.get("NEXT_PUBLIC_PUBLIC_API_URL", "/"))
    return serve(APP, [Listener(bind_host_default(), int(port_text), handle, IDLE_TIMEOUT_S)])


if __name__ == "__main__":
    sys.exit(main())
