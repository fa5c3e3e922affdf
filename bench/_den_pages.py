"""How fast Den's web UI answers its folder page, beside the JSON API's listing of the same folder.

Used by ``bench/den.py`` (:func:`bench`, per backend, on its folder of 1,000 resources), or alone::

    .venv/bin/python bench/_den_pages.py            # a SQLite Den of its own, 1,000 resources

The page is fetched the way a browser does (a session cookie from the sign-in form), so each figure covers
the session lookup, the access check, the listing and the HTML. Figures are seen from the client: server
time plus loopback HTTP, an upper bound of the server time (the issue's target: < 100 ms for 1,000 entries).
The JSON API's ``GET /v1/folders`` of the same folder, measured in the same run, is the baseline.
"""

from __future__ import annotations

import re
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PAGE_TARGET_MS = 100.0
CALLS = 100
WARMUP = 5
HTTP_TIMEOUT_S = 30.0


def signed_in(den_url: str, token: str) -> httpx.Client:
    """An HTTP client holding a UI session of the user of ``token``, signed in through the form."""
    client = httpx.Client(base_url=den_url, timeout=HTTP_TIMEOUT_S)
    form = client.get("/ui/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    if csrf is None:
        raise RuntimeError(f"the sign-in page has no CSRF token: {form.status_code} {form.text[:200]}")
    answer = client.post("/ui/signin", data={"csrf": csrf[1], "token": token})
    if "rh_session" not in client.cookies:
        raise RuntimeError(f"signing in failed: {answer.status_code} {answer.text[:300]}")
    return client


def folder_page_figures(den_url: str, token: str, folder: str, calls: int = CALLS,
                        warmup: int = WARMUP) -> dict[str, Any]:
    """Latency of ``/ui/folders<folder>`` and of ``/v1/folders<folder>`` (baseline), ``calls`` times each after
    ``warmup``; prints p50/p99 in ms and returns them with the number of rows the page listed."""
    with closing(signed_in(den_url, token)) as page_client, httpx.Client(
            base_url=den_url, timeout=HTTP_TIMEOUT_S, headers={"Authorization": f"Bearer {token}"}) as api:
        first = page_client.get(f"/ui/folders{folder}")
        first.raise_for_status()
        rows = first.text.count("<tr>") - 1  # less the header row
        page = C.latencies(lambda: page_client.get(f"/ui/folders{folder}").raise_for_status(), calls, warmup)
        listing = C.latencies(lambda: api.get(f"/v1/folders{folder}").raise_for_status(), calls, warmup)
    figures = {"rows": rows, "page_p50_ms": C.median(page) * 1e3, "page_p99_ms": C.percentile(page, 99) * 1e3,
               "api_p50_ms": C.median(listing) * 1e3, "api_p99_ms": C.percentile(listing, 99) * 1e3}
    verdict = "ok" if figures["page_p50_ms"] < PAGE_TARGET_MS else "MISS"
    print(f"  UI folder page ({rows:,} rows): {C.lat_summary(page)}   target p50 < {PAGE_TARGET_MS:g} ms: {verdict}")
    print(f"  JSON API listing, same folder (baseline): {C.lat_summary(listing)}")
    print(f"  page / API: p50 {figures['page_p50_ms'] / figures['api_p50_ms']:.2f}x, "
          f"p99 {figures['page_p99_ms'] / figures['api_p99_ms']:.2f}x")
    return figures


def bench(backend: str, den_url: str, token: str, folder: str, results: Any) -> None:
    """:func:`folder_page_figures` for ``bench/den.py``: its figures go into the run's notes."""
    figures = folder_page_figures(den_url, token, folder)
    results.notes.append(
        f"{backend}: web UI folder page ({figures['rows']:,} rows) p50 {figures['page_p50_ms']:.1f} ms, p99 "
        f"{figures['page_p99_ms']:.1f} ms (target p50 < {PAGE_TARGET_MS:g} ms); the JSON API's listing of "
        f"the same folder p50 {figures['api_p50_ms']:.1f} ms")


def main() -> None:
    """``runhouse den serve`` in a process of its own over a SQLite file with 1,000 resources in one folder
    (written straight into the database first), measured from this process."""
    import os
    import subprocess
    import tempfile

    from cryptography.fernet import Fernet
    from sqlalchemy.orm import Session

    from runhouse.den import auth, service
    from runhouse.den.crypto import KEY_ENV
    from runhouse.den.db import Database

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/den.sqlite"
        with Database(url) as database:
            database.migrate()
            token = database.run(lambda session: auth.add_user(session, "bench"))

            def fill(session: Session) -> None:
                caller = auth.authenticate(session, token)
                for i in range(1000):
                    service.put_resource(caller, f"/bench/fns/fn_{i:04d}", {"resource_type": "function", "i": i})

            database.run(fill)
        port = C.free_port()
        env = {**os.environ, "RH_CONFIG_DIR": folder, KEY_ENV: Fernet.generate_key().decode()}
        with open(Path(folder) / "den.log", "wb") as log:
            den = subprocess.Popen([sys.executable, "-m", "runhouse.cli", "den", "serve", "--port", str(port),
                                    "--db", url], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            C.wait_until(lambda: C.http_health(port), den, "Den")
            print("-- web UI folder page: /bench/fns (1,000 resources), SQLite, `runhouse den serve` of its own")
            folder_page_figures(f"http://{C.HOST}:{port}", token, "/bench/fns")
        finally:
            den.terminate()
            den.wait(timeout=HTTP_TIMEOUT_S)


if __name__ == "__main__":
    main()
