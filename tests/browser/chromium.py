"""A real headless Chromium for the console's browser tests and its screenshots: Debian's
`chromium` package (.ci/run installs it with fonts-wqy-microhei, so Chinese renders), driven by
Playwright, which is told where the browser is (it may not download one of its own).

Also the live stack they look at: `cso up` with the demo divisions and tokens on, and a little
history put through the services' own HTTP APIs (a task started with evidence, a message in an
official's inbox), so that every page has something to show.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from cso.tokens import claims, mint, signing_key
from cso_local.stack import read_stack_file
from tests.support import CsoUp, missing

CHROMIUM = Path(os.environ.get("CSO_CHROMIUM", "/usr/bin/chromium"))
# As root, in a container, with nothing to fetch from anywhere.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
PLAN = "guanghan-2024-chuangtese"
RECIPIENT = "guanghan.mzj"
COMMUNITY = "510681001014"  # 西城社区居民委员会, 雒城街道, 广汉市
ORGANIZATIONS = ("西城社区书画协会", "西城社区合唱团", "西城社区志愿服务队")
# The smallest file targets takes as a pdf (it looks at the content, not only the name).
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched browser, or a skip (a failure where CSO_REQUIRE_TOOLS names chromium)."""
    if not CHROMIUM.exists():
        missing("chromium", f"no Chromium at {CHROMIUM} (apt-get install chromium fonts-wqy-microhei)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("chromium", "playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def token(up: CsoUp | Path, region: str, *roles: str, sub: str = "official") -> str:
    """A token signed with the stack's key: `cso token` of a CsoUp, or the key of a data dir."""
    if isinstance(up, Path):
        return mint(signing_key(up), claims(roles, region, sub, 3600))
    args = [arg for role in roles for arg in ("--role", role)]
    done = up.cso("token", *args, "--region", region, "--sub", sub)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def url(up: CsoUp | Path, service: str) -> str:
    """Where a service of the stack listens (stack.json)."""
    if isinstance(up, Path):
        return str((read_stack_file(up) or {})["services"][service]["url"])
    return up.url(service)


def sign_in(page: Any, base: str, tok: str) -> None:
    """Through the sign-in page, as an official does."""
    page.goto(f"{base}/login")
    page.fill("#token", tok)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def seed(up: CsoUp | Path) -> None:
    """Some history through the services' APIs: three organizations filed in one community, an
    official subscribed to Guanghan's task changes (in-app), task 1.1 of Guanghan's plan started
    with a pdf as evidence; until targets counts them and the message is in the inbox."""
    planner = {"Authorization": f"Bearer {token(up, '510681', 'planner', sub='guanghan.planner')}"}
    registrar = {"Authorization": f"Bearer {token(up, '510681', 'registrar', sub='guanghan.register')}"}
    reader = {"Authorization": f"Bearer {token(up, '510681', 'subscriber', sub=RECIPIENT)}"}
    targets, notify = url(up, "targets"), url(up, "notify")
    with httpx.Client(timeout=30, trust_env=False) as http:
        for name in ORGANIZATIONS:
            answer = http.post(f"{url(up, 'registry')}/commands/file", headers=registrar, json={
                "name": name, "community_code": COMMUNITY, "category": "culture_sports", "filed_on": "2024-03-01"})
            assert answer.status_code == 200, answer.text
        answer = http.post(f"{notify}/subscriptions", headers=reader, json={
            "recipient": RECIPIENT, "channels": {"inbox": True}, "events": ["TaskStatusChanged"],
            "region": "510681", "include_subregions": True})
        assert answer.status_code == 201, answer.text
        answer = http.post(f"{targets}/plans/{PLAN}/tasks/1.1/start", headers=planner, json={"by": "广汉市民政局"})
        assert answer.status_code == 200, answer.text
        answer = http.post(f"{targets}/plans/{PLAN}/tasks/1.1/evidence", params={"filename": "三张清单.pdf"},
                           headers={**planner, "Content-Type": "application/pdf"}, content=PDF)
        assert answer.status_code == 201, answer.text
        deadline = time.monotonic() + 60
        while not http.get(f"{notify}/inbox/{RECIPIENT}", headers=reader).json()["items"]:
            assert time.monotonic() < deadline, "the task's change never reached the inbox"
            time.sleep(0.3)
        while http.get(f"{targets}/coverage/{COMMUNITY}").json()["figures"]["orgs"] != len(ORGANIZATIONS):
            assert time.monotonic() < deadline, f"targets never counted the organizations of {COMMUNITY}"
            time.sleep(0.3)
