"""Screenshots of Den's web UI for the README: a Den with sample data, its main pages in Debian's Chromium.

Run from the repository root (needs ``/usr/bin/chromium`` and the dev dependencies)::

    .venv/bin/python scripts/screenshots.py                 # PNGs into docs/screenshots/
    .venv/bin/python scripts/screenshots.py --out /tmp/shots

Den runs in this process on a free loopback port over a SQLite file in a temporary folder (with its own
runhouse folder and secret key), and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.fernet import Fernet
from playwright.sync_api import Page, sync_playwright

from runhouse.den import auth
from runhouse.den.app import create_app
from runhouse.den.crypto import SecretBox
from runhouse.den.db import Database

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
START_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _function(name: str, **extra: Any) -> dict[str, Any]:
    return {"resource_type": "function", "name": name, "module": f"pipelines.{name}", "env": "/alice/envs/train",
            "system": "/alice/clusters/a10g", **extra}


def sample_data(den_url: str, database: Database) -> str:
    """Users, an org, resources with versions and shares, secrets, a cluster with a heartbeat; alice's token."""
    alice = database.run(lambda session: auth.add_user(session, "alice", "alice@example.com"))
    database.run(lambda session: auth.add_user(session, "bob", "bob@example.com"))
    database.run(lambda session: auth.add_user(session, "carol", "carol@example.com"))
    database.run(lambda session: auth.add_org(session, "ml-team", {"alice": "admin", "bob": "member",
                                                                   "carol": "member"}))
    with httpx.Client(base_url=den_url, headers={"Authorization": f"Bearer {alice}"}, timeout=HTTP_TIMEOUT_S) as http:
        def put(address: str, config: dict[str, Any]) -> None:
            http.put(f"/v1/resources{address}", json={"config": config}).raise_for_status()

        for lr, epochs in ((0.001, 10), (0.0005, 20), (0.0003, 30)):
            put("/alice/pipelines/train", _function("train", reqs=["torch==2.4", "numpy"],
                                                    defaults={"lr": lr, "epochs": epochs}))
        put("/alice/pipelines/evaluate", _function("evaluate"))
        put("/alice/pipelines/preprocess", _function("preprocess"))
        put("/alice/envs/train", {"resource_type": "env", "name": "train", "reqs": ["torch==2.4", "numpy"],
                                  "env_vars": {"MODE": "prod"}})
        put("/alice/data/imagenet-subset", {"resource_type": "table", "path": "s3://bucket/imagenet", "rows": 128000})
        put("/alice/models/resnet50", {"resource_type": "blob", "path": "s3://bucket/resnet50.pt"})
        put("/alice/clusters/a10g", {"resource_type": "cluster", "name": "a10g", "ips": ["10.0.0.5"],
                                     "server_port": 32300})
        put("/ml-team/shared/tokenizer", _function("tokenizer"))
        for address, user, level in (("/alice/pipelines", "bob", "read"), ("/alice/pipelines/train", "carol", "write")):
            http.put(f"/v1/shares{address}", json={"users": [user], "access_level": level}).raise_for_status()
        for owner, name, provider in (("alice", "aws", "aws"), ("alice", "huggingface", "huggingface"),
                                      ("ml-team", "wandb", "wandb")):
            http.put(f"/v1/secrets/{owner}/{name}", json={"provider": provider, "values": {"key": "sample"}}
                     ).raise_for_status()
        key = http.post("/v1/cluster-keys/alice/clusters/a10g").json()["key"]
        http.post("/v1/launches/alice/clusters/a10g", json={"origin": "alice@laptop"}).raise_for_status()
        httpx.post(f"{den_url}/v1/heartbeats/alice/clusters/a10g", headers={"Authorization": f"Bearer {key}"},
                   json={"status": {"server_pid": 4242, "runhouse_version": "0.1.0", "envs": 3, "workers": 4,
                                    "gpu": "A10G", "uptime_s": 5400},
                         "calls": {"alice": 152, "bob": 37}}, timeout=HTTP_TIMEOUT_S).raise_for_status()
        http.get("/v1/resources/alice/pipelines/train").raise_for_status()
    return alice


def shoot(page: Page, url: str, path: Path, full_page: bool = False) -> None:
    page.goto(url)
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default: docs/screenshots)")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["RH_CONFIG_DIR"] = folder
        database = Database(f"sqlite:///{folder}/den.sqlite")
        database.migrate()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = uvicorn.Server(uvicorn.Config(create_app(database, SecretBox(Fernet.generate_key())),
                                               host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"Den did not start on port {port}")
                time.sleep(0.01)
            token = sample_data(url, database)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                try:
                    page = browser.new_context(viewport=VIEWPORT, device_scale_factor=1).new_page()
                    shoot(page, f"{url}/ui/signin", out / "signin.png")
                    page.fill("#token", token)
                    with page.expect_navigation():
                        page.click("button:has-text('Sign in')")
                    shoot(page, f"{url}/ui/folders", out / "folders.png")
                    shoot(page, f"{url}/ui/folders/alice/pipelines", out / "folder.png")
                    shoot(page, f"{url}/ui/resources/alice/pipelines/train", out / "resource.png", full_page=True)
                    shoot(page, f"{url}/ui/diff/alice/pipelines/train?a=1&b=3", out / "diff.png")
                    shoot(page, f"{url}/ui/secrets", out / "secrets.png")
                    shoot(page, f"{url}/ui/clusters", out / "clusters.png")
                    shoot(page, f"{url}/ui/clusters/alice/clusters/a10g", out / "cluster.png")
                    shoot(page, f"{url}/ui/orgs", out / "orgs.png")
                    shoot(page, f"{url}/ui/audit", out / "audit.png")
                    page.goto(f"{url}/ui/tokens")
                    with page.expect_navigation():
                        page.click("button:has-text('Create a token')")
                    page.screenshot(path=str(out / "tokens.png"))
                    print(f"wrote {out / 'tokens.png'}")
                    assert re.search(r"rh_[\w-]+", page.inner_text("#new-token"))
                finally:
                    browser.close()
        finally:
            server.should_exit = True
            thread.join(timeout=START_TIMEOUT_S)
            database.close()


if __name__ == "__main__":
    main()
