"""Den's web UI in a real browser: Debian's Chromium driven by Playwright, against a Den of the module's own.

One browser for the module; each test opens its own contexts (a fresh cookie jar per user).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from runhouse.den import auth
from runhouse.den.db import Token, User, WebSession, utcnow
from tests.integration.den.conftest import DenServer, DenUser, put, sqlite_den_in

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

Browser = playwright_api.Browser
Page = playwright_api.Page
XSS = "<script>alert(1)</script>"
PAGE_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def den(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DenServer]:
    with sqlite_den_in(tmp_path_factory.mktemp("den_ui")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_pages(browser: Browser) -> Iterator[list[Page]]:
    """Pages the test opened (each in a context of its own), closed after it."""
    pages: list[Page] = []
    yield pages
    for page in pages:
        page.context.close()


def new_page(browser: Browser, open_pages: list[Page]) -> Page:
    page = browser.new_context().new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.on("dialog", lambda dialog: pytest.fail(f"a script ran in the page: {dialog.message}"))
    open_pages.append(page)
    return page


def sign_in_with_the_form(den: DenServer, browser: Browser, open_pages: list[Page], user: DenUser) -> Page:
    """A browser signed in as ``user`` by filling in the sign-in form, on the folders page."""
    page = new_page(browser, open_pages)
    page.goto(f"{den.url}/ui/folders")
    assert "/ui/signin" in page.url  # signed out: sent to sign in, coming back here afterwards
    page.fill("#token", user.token)
    click(page, "button:has-text('Sign in')")
    assert page.url == f"{den.url}/ui/folders"
    return page


def sign_in(den: DenServer, browser: Browser, open_pages: list[Page], user: DenUser) -> Page:
    """A browser signed in as ``user``: the sign-in form sent by the browser context's own HTTP client (its
    cookies are the browser's), without rendering it; on no page yet."""
    page = new_page(browser, open_pages)
    form = page.request.get(f"{den.url}/ui/signin").text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    answer = page.request.post(f"{den.url}/ui/signin", form={"csrf": csrf[1], "token": user.token}, max_redirects=0)
    assert answer.status == 303, answer.text()
    return page


def click(page: Page, target: str | playwright_api.Locator) -> None:
    """Click a link or a form's button and wait for the page it leads to."""
    with page.expect_navigation():
        (page.locator(target) if isinstance(target, str) else target).click()


def error_of(page: Page) -> str:
    return page.inner_text(".error")


def test_sign_in_sets_a_strict_http_only_session_cookie_and_sign_out_ends_it(
        den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    page = sign_in_with_the_form(den, browser, open_pages, alice)
    assert page.inner_text(".who") == alice.name
    cookie = next(c for c in page.context.cookies() if c["name"] == "rh_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    assert alice.token not in cookie["value"]  # a random session id, not the token
    assert den.count("web_sessions") >= 1

    click(page, "button:has-text('Sign out')")
    page.wait_for_url(re.compile(r".*/ui/signin"))
    page.goto(f"{den.url}/ui/folders")
    assert "/ui/signin" in page.url
    # The old cookie is dead server-side too, not just forgotten by this browser.
    replay = new_page(browser, open_pages)
    replay.context.add_cookies([{"name": "rh_session", "value": cookie["value"], "url": f"{den.url}/ui"}])
    replay.goto(f"{den.url}/ui/folders")
    assert "/ui/signin" in replay.url
    # The token itself still works for the user's other clients.
    assert alice.http.get("/v1/me").status_code == 200


def test_an_expired_session_is_refused(den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    page = sign_in(den, browser, open_pages, alice)
    assert page.goto(f"{den.url}/ui/tokens") is not None and "/ui/tokens" in page.url
    past = utcnow() - timedelta(minutes=1)
    alices = select(Token.id).join(User).where(User.name == alice.name)
    den.database.run(lambda session: session.execute(
        update(WebSession).where(WebSession.token_id.in_(alices)).values(expires_at=past)))
    page.goto(f"{den.url}/ui/tokens")
    assert "/ui/signin" in page.url


def test_a_wrong_token_is_refused_on_the_sign_in_page(den: DenServer, browser: Browser,
                                                       open_pages: list[Page]) -> None:
    page = new_page(browser, open_pages)
    page.goto(f"{den.url}/ui/signin")
    page.fill("#token", "rh_not-a-token")
    click(page, "button:has-text('Sign in')")
    assert "unknown token" in error_of(page)
    assert not [c for c in page.context.cookies() if c["name"] == "rh_session"]


def test_folders_are_browsed_as_a_tree_and_searched_by_name(den: DenServer, browser: Browser,
                                                            open_pages: list[Page]) -> None:
    alice = den.user("alice")
    put(alice, f"/{alice.name}/proj/train_fn")
    put(alice, f"/{alice.name}/proj/data/table", {"resource_type": "table"})
    put(alice, f"/{alice.name}/notes")
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/folders")
    click(page, f"a:text-is('/{alice.name}')")
    assert page.inner_text("h1") == f"/{alice.name}"
    rows = page.locator("tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in rows] == ["notes", "proj/"]
    click(page, "a:text-is('proj/')")
    texts = page.locator("tbody tr").all_inner_texts()
    assert any(t.startswith("data/\tfolder\t" + alice.name) for t in texts)
    assert any(t.startswith("train_fn\tfunction\t" + alice.name) and t.endswith("write") for t in texts)
    page.fill("input[name=q]", "TRAIN")
    with page.expect_navigation():
        page.press("input[name=q]", "Enter")
    assert page.locator("tbody a").all_inner_texts() == [f"/{alice.name}/proj/train_fn"]


def test_a_diff_between_versions_and_a_rollback(den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/fn"
    for lr in (0.1, 0.2, 0.3):
        put(alice, address, {"resource_type": "function", "lr": lr, "steps": 10})
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/resources{address}")
    assert [v.split("\t")[:2] for v in page.locator("table.versions tbody tr").all_inner_texts()] == [
        ["v3 current", alice.name], ["v2", alice.name], ["v1", alice.name]]
    page.select_option("select[name=a]", "1")
    page.select_option("select[name=b]", "3")
    click(page, "button:has-text('Diff')")
    assert page.locator("pre.diff .del").all_inner_texts() == ['-  "lr": 0.1,']
    assert page.locator("pre.diff .add").all_inner_texts() == ['+  "lr": 0.3,']

    page.goto(f"{den.url}/ui/resources{address}")
    click(page, "button:has-text('Roll back to v1')")
    assert "v4 current" in page.locator("table.versions tbody tr").first.inner_text()
    assert '"lr": 0.1' in page.inner_text("#config")
    current = alice.http.get(f"/v1/resources{address}").json()
    assert current["version"] == 4 and current["config"]["lr"] == 0.1


def test_sharing_gives_the_other_user_access_and_removing_it_takes_it_away(
        den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    address = f"/{alice.name}/shared/fn"
    put(alice, address)
    bobs = sign_in(den, browser, open_pages, bob)
    bobs.goto(f"{den.url}/ui/resources{address}")
    assert "PermissionDeniedError" in bobs.inner_text("h1")

    alices = sign_in(den, browser, open_pages, alice)
    alices.goto(f"{den.url}/ui/resources{address}")
    alices.fill("input[name=who]", bob.name)
    click(alices, "button:has-text('Share')")
    assert alices.locator("table.shares tbody tr").first.inner_text().startswith(f"{bob.name}\tread")

    bobs.goto(f"{den.url}/ui/resources{address}")
    assert "PermissionDeniedError" not in bobs.inner_text("main")
    assert bobs.inner_text(".heading .badge") == "read"
    assert bobs.locator("button:has-text('Share')").count() == 0  # readers get no sharing editor, no rollback
    bobs.goto(f"{den.url}/ui/folders")
    assert address in bobs.locator("tbody").inner_text()  # in bob's tree, under what is shared with him

    click(alices, "button:has-text('Remove')")
    assert "Not shared with anyone" in alices.inner_text("table.shares")
    bobs.goto(f"{den.url}/ui/resources{address}")
    assert "PermissionDeniedError" in bobs.inner_text("h1")


def test_sharing_with_an_org_shares_with_its_members(den: DenServer, browser: Browser,
                                                     open_pages: list[Page]) -> None:
    alice, bob, carol = den.user("alice"), den.user("bob"), den.user("carol")
    team = den.org({alice.name: "admin", bob.name: "member", carol.name: "member"})
    address = f"/{alice.name}/report"
    put(alice, address)
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/resources{address}")
    page.select_option("select[name=kind]", "org")
    page.fill("input[name=who]", team)
    page.select_option("select[name=access_level]", "write")
    click(page, "button:has-text('Share')")
    assert bob.http.get(f"/v1/resources{address}").status_code == 200
    assert carol.http.put(f"/v1/resources{address}", json={"config": {"v": 2}}).status_code == 200


def test_an_org_admin_adds_and_removes_members(den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice, bob = den.user("alice"), den.user("bob")
    team = den.org({alice.name: "admin"})
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/orgs")
    page.fill("input[aria-label='user to add']", bob.name)
    click(page, "button:has-text('Add member')")
    assert f"{bob.name}\tmember" in page.inner_text("main")
    assert bob.http.get(f"/v1/orgs/{team}").status_code == 200
    click(page, page.locator("tr", has_text=bob.name).locator("button:has-text('Remove')"))
    assert bob.name not in page.inner_text("main")
    assert bob.http.get(f"/v1/orgs/{team}").status_code == 403

    bobs = sign_in(den, browser, open_pages, bob)  # members who are no admins get no editor
    den.database.run(lambda session: auth.add_org(session, team, {bob.name: "member"}))
    bobs.goto(f"{den.url}/ui/orgs")
    assert bobs.locator("button:has-text('Add member')").count() == 0


def test_a_new_token_is_shown_once_and_a_revoked_one_is_refused(
        den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/tokens")
    click(page, "button:has-text('Create a token')")
    token = page.inner_text("#new-token").strip()
    assert token.startswith("rh_") and httpx.get(f"{den.url}/v1/me", headers={
        "Authorization": f"Bearer {token}"}).json()["name"] == alice.name
    page.goto(f"{den.url}/ui/tokens")
    assert token not in page.content()  # shown that once only
    rows = page.locator("tbody tr").all_inner_texts()
    assert len(rows) == 2 and "this session" in rows[0]

    click(page, page.locator("tbody tr").nth(1).locator("button"))
    assert page.locator("tbody tr").count() == 1
    refused = httpx.get(f"{den.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    other = new_page(browser, open_pages)
    other.goto(f"{den.url}/ui/signin")
    other.fill("#token", token)
    click(other, "button:has-text('Sign in')")
    assert "unknown token" in error_of(other)

    # Revoking the token this session signed in with ends the session.
    click(page, page.locator("tbody tr").first.locator("button"))
    assert "/ui/signin" in page.url
    assert alice.http.get("/v1/me").status_code == 401


def test_forms_without_the_sessions_csrf_token_are_refused(den: DenServer, browser: Browser,
                                                           open_pages: list[Page]) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/guarded"
    put(alice, address)
    put(alice, address, {"resource_type": "function", "v": 2})
    page = sign_in(den, browser, open_pages, alice)  # page.request sends the session cookie
    page.goto(f"{den.url}/ui/resources{address}")
    for form in ({"version": "1"}, {"version": "1", "csrf": "0" * 64}):
        answer = page.request.post(f"{den.url}/ui/rollback{address}", form=form, max_redirects=0)
        assert answer.status == 403 and "CSRF" in answer.text()
    assert alice.http.get(f"/v1/resources{address}").json()["version"] == 2
    # With the page's own token the same request goes through.
    csrf = page.get_attribute("input[name=csrf]", "value")
    answer = page.request.post(f"{den.url}/ui/rollback{address}", form={"version": "1", "csrf": csrf or ""},
                               max_redirects=0)
    assert answer.status == 303
    assert alice.http.get(f"/v1/resources{address}").json()["version"] == 3
    # Signing in needs the sign-in form's own token too (no logging a browser in from another site).
    outsider = httpx.post(f"{den.url}/ui/signin", data={"token": alice.token, "csrf": "x"})
    assert outsider.status_code == 403 and "rh_session" not in outsider.headers.get("set-cookie", "")


def test_user_written_text_is_shown_as_text(den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/xss"
    put(alice, address, {"resource_type": XSS, "name": "<img src=x onerror=alert(2)>"})
    page = sign_in(den, browser, open_pages, alice)  # a dialog (alert) fails the test
    page.goto(f"{den.url}/ui/folders/{alice.name}")
    assert XSS in page.inner_text("tbody")
    page.goto(f"{den.url}/ui/resources{address}")
    assert XSS in page.inner_text("h1") and "<img src=x onerror=alert(2)>" in page.inner_text("#config")
    page.goto(f"{den.url}/ui/folders?q={XSS}")
    assert XSS in page.inner_text("main")
    page.goto(f"{den.url}/ui/resources/{alice.name}/{XSS}")
    assert "Invalid resource name" in error_of(page) and "<script>" in error_of(page)
    assert page.locator("main script, main img").count() == 0


def test_secret_values_never_reach_the_page(den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    value = "AKIA-very-secret-value"
    assert alice.http.put(f"/v1/secrets/{alice.name}/aws", json={
        "provider": "aws", "values": {"aws_secret_access_key": value}}).status_code == 200
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/secrets")
    assert page.locator("tbody tr").first.inner_text().split("\t")[:4] == ["aws", "aws", alice.name, alice.name]
    assert value not in page.content()


def test_clusters_show_their_last_heartbeat_and_usage(den: DenServer, browser: Browser,
                                                      open_pages: list[Page]) -> None:
    alice = den.user("alice")
    address = f"/{alice.name}/gpu"
    put(alice, address, {"resource_type": "cluster", "name": "gpu"})
    key = alice.http.post(f"/v1/cluster-keys{address}").json()["key"]
    beat = httpx.post(f"{den.url}/v1/heartbeats{address}", headers={"Authorization": f"Bearer {key}"},
                      json={"status": {"server_pid": 4242, "envs": ["base"]}, "calls": {alice.name: 7}})
    assert beat.status_code == 200, beat.text
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/clusters")
    row = page.locator("tr", has_text=address).inner_text()
    assert "server_pid: 4242" in row and row.split("\t")[4] == "7"
    click(page, f"a:text-is('{address}')")
    assert "4242" in page.inner_text(".kvtable") and alice.name in page.inner_text("main")
    put(alice, f"/{alice.name}/fn")
    answer = page.goto(f"{den.url}/ui/clusters/{alice.name}/fn")
    assert answer is not None and answer.status == 400 and "is a function, not a cluster" in error_of(page)


def test_the_audit_log_is_filtered_and_paged(den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    for i in range(55):
        put(alice, f"/{alice.name}/many/r{i}")
    put(alice, f"/{alice.name}/other")
    page = sign_in(den, browser, open_pages, alice)
    page.goto(f"{den.url}/ui/audit")
    page.fill("input[name=resource]", f"/{alice.name}/many")
    page.select_option("select[name=action]", "create")
    click(page, "button:has-text('Filter')")
    first = page.locator("table.audit tbody tr").all_inner_texts()
    assert len(first) == 50 and all("\tcreate\t" in row and "/many/" in row for row in first)
    click(page, "a.older")
    second = page.locator("table.audit tbody tr").all_inner_texts()
    assert len(second) == 5 and not set(first) & set(second)
    page.goto(f"{den.url}/ui/audit?action=nonsense")
    assert "action must be one of" in error_of(page)


def test_a_user_without_access_sees_nothing_of_others_resources(
        den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice, mallory = den.user("alice"), den.user("mallory")
    address = f"/{alice.name}/private/model"
    put(alice, address, {"resource_type": "function", "weights": "private-marker"})
    put(alice, address, {"resource_type": "function", "weights": "private-marker-2"})
    put(alice, f"/{alice.name}/box", {"resource_type": "cluster"})
    alice.http.put(f"/v1/secrets/{alice.name}/hf", json={"provider": "huggingface", "values": {"token": "x"}})
    page = sign_in(den, browser, open_pages, mallory)
    page.goto(f"{den.url}/ui/folders")
    assert alice.name not in page.inner_text("main")
    for path in (f"/ui/folders/{alice.name}", f"/ui/folders/{alice.name}/private"):
        page.goto(den.url + path)
        assert "Nothing here that you can read" in page.inner_text("tbody")
    for path in (f"/ui/resources{address}", f"/ui/resources{address}?version=1", f"/ui/diff{address}?a=1&b=2",
                 f"/ui/clusters/{alice.name}/box", f"/ui/resources/{alice.name}/nothing-here"):
        answer = page.goto(den.url + path)
        assert answer is not None and answer.status == 403, path
        assert "private-marker" not in page.content()
    page.goto(f"{den.url}/ui/folders?q=model")
    assert "Nothing you can read matches" in page.inner_text("tbody")
    page.goto(f"{den.url}/ui/clusters")
    assert alice.name not in page.inner_text("tbody")
    page.goto(f"{den.url}/ui/secrets")
    assert "huggingface" not in page.content()
    page.goto(f"{den.url}/ui/audit?user={alice.name}")
    assert "No entries" in page.inner_text("tbody")
    # Forms with mallory's own valid CSRF token are still checked against alice's ACL.
    csrf = page.get_attribute("input[name=csrf]", "value") or ""
    for action, form in (("rollback", {"version": "1"}), ("share", {"kind": "user", "who": mallory.name,
                                                                     "access_level": "write"})):
        answer = page.request.post(f"{den.url}/ui/{action}{address}", form={**form, "csrf": csrf}, max_redirects=0)
        assert answer.status == 403, answer.text()
    assert alice.http.get(f"/v1/resources{address}").json()["version"] == 2
    assert mallory.http.get(f"/v1/resources{address}").status_code == 403


def test_pages_send_security_headers_and_bad_input_gives_an_error_page(
        den: DenServer, browser: Browser, open_pages: list[Page]) -> None:
    alice = den.user("alice")
    page = sign_in(den, browser, open_pages, alice)
    answer = page.goto(f"{den.url}/ui/folders")
    assert answer is not None
    headers = answer.headers
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers[
        "content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    for path, status in ((f"/ui/resources/{alice.name}/x?version=abc", 400), ("/ui/no/such/page", 404),
                         (f"/ui/folders/{alice.name}/..", 400), (f"/ui/resources/{alice.name}/none", 404)):
        answer = page.goto(den.url + path)
        assert answer is not None and answer.status == status, path
        assert error_of(page)
    outsider = httpx.get(f"{den.url}/ui/folders", follow_redirects=False)
    assert outsider.status_code == 303 and "/ui/signin" in outsider.headers["location"]
