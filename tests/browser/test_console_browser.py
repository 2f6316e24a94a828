"""The web console in a real headless Chromium on a live `cso up` (demo divisions, tokens on):
its pages render in Chinese, the region tree drills down from the province to a community, and
signing in holds an official to their region (the console refuses, and so do the services).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.chromium import COMMUNITY, ORGANIZATIONS, PLAN, RECIPIENT, chromium, seed, sign_in, token
from tests.support import CsoUp

# What a page shows after a click is waited for (a loaded machine may take seconds to navigate),
# never read at once: is_visible() right after a click raced the navigation (a flaky CI failure).
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CsoUp]:
    with CsoUp(tmp_path_factory.mktemp("console") / ".cso", demo=True, env={"CSO_AUTH": "jwt"}) as stack:
        seed(stack)
        yield stack


@pytest.fixture(scope="module")
def browser(up: CsoUp) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="zh-CN")
    try:
        yield context.new_page()
    finally:
        context.close()


def base(up: CsoUp) -> str:
    return up.url("console")


def test_a_page_without_sign_in_goes_to_sign_in_and_comes_back(up: CsoUp, page: Any) -> None:
    page.goto(f"{base(up)}/regions/510681")
    assert re.search(r"/login\?next=%2Fregions%2F510681$", page.url)
    expect(page.get_by_role("heading", name="登录")).to_be_visible(timeout=WAIT_MS)
    page.fill("#token", "not-a-token")
    page.click("form[action='/login'] button[type=submit]")
    assert "令牌无效" in page.locator("p.error").inner_text()
    page.fill("#token", token(up, "510681", "planner"))
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(f"{base(up)}/regions/510681")
    expect(page.get_by_role("heading", name=re.compile("广汉市"))).to_be_visible(timeout=WAIT_MS)
    # The cookie: out of scripts' reach, never sent by another site's page.
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""


def test_drill_down_from_the_province_to_a_community(up: CsoUp, page: Any) -> None:
    # Nothing refused on the way: no script, style or request blocked by the pages' CSP, no error.
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, base(up), token(up, "51", "planner"))
    assert page.url == f"{base(up)}/regions/51"
    expect(page.get_by_role("heading", name=re.compile("四川省"))).to_be_visible(timeout=WAIT_MS)
    for label in ("主要指标", "目标", "下级区划"):
        expect(page.get_by_role("heading", name=label)).to_be_visible(timeout=WAIT_MS)
    # A branch opens in place (htmx) ...
    page.get_by_role("button", name="展开 德阳市").click()
    page.locator("#row-510681").wait_for()
    assert page.locator("#row-510681 a").inner_text() == "广汉市"
    # ... and each name opens its region: city, county, township, community.
    for name, code in (("德阳市", "5106"), ("广汉市", "510681"), ("雒城街道", "510681001"),
                       ("西城社区居民委员会", COMMUNITY)):
        page.locator(f"#row-{code} a").click()
        page.wait_for_url(f"{base(up)}/regions/{code}")
        expect(page.get_by_role("heading", name=re.compile(name))).to_be_visible(timeout=WAIT_MS)
    assert "社区（村）" in page.locator("h1").inner_text()
    # The community's own figures: the three organizations filed there.
    orgs = page.locator(".cards div", has_text="社区社会组织（个）").locator("dd")
    assert orgs.inner_text() == str(len(ORGANIZATIONS))
    # The breadcrumb leads back up, every step named.
    assert page.locator("nav.crumbs a").all_inner_texts() == ["四川省", "德阳市", "广汉市", "雒城街道"]
    assert errors == []


def test_a_county_official_sees_their_county_only(up: CsoUp, page: Any) -> None:
    sign_in(page, base(up), token(up, "510681", "planner"))
    assert page.url == f"{base(up)}/regions/510681"
    for elsewhere in ("511102", "5106", "51", "5111"):
        response = page.goto(f"{base(up)}/regions/{elsewhere}")
        assert response.status == 403
        assert f"{elsewhere} 不在您的辖区（510681）内" in page.locator("p.error").inner_text()
    # Nor the city's plan, which the list does not offer either.
    assert page.goto(f"{base(up)}/plans/city-2021-2023-special-action").status == 403
    page.goto(f"{base(up)}/plans")
    assert page.locator("table.plans a").all_inner_texts() == ["广汉市城乡社区治理“创特色”工程实施方案"]
    # The services refuse it too: the console forwards the official's own token.
    cookie = page.context.cookies()[0]["value"]
    with httpx.Client(trust_env=False, timeout=30) as http:
        answer = http.get(f"{up.url('notify')}/inbox/someone-else", headers={"Authorization": f"Bearer {cookie}"})
    assert answer.status_code == 403, answer.text


def test_plan_ledger_task_evidence_and_a_units_to_do_list(up: CsoUp, page: Any) -> None:
    sign_in(page, base(up), token(up, "510681", "planner"))
    page.get_by_role("link", name="计划台账").click()
    page.get_by_role("link", name="广汉市城乡社区治理“创特色”工程实施方案").click()
    page.wait_for_url(f"{base(up)}/plans/{PLAN}")
    row = page.locator("table.ledger tr", has_text="制定社区依法履职")
    assert "进行中" in row.inner_text()
    row.get_by_role("link", name=re.compile("制定社区依法履职")).click()
    expect(page.get_by_role("heading", name="佐证材料")).to_be_visible(timeout=WAIT_MS)
    link = page.get_by_role("link", name="三张清单.pdf")
    answer = page.request.get(base(up) + link.get_attribute("href"))
    assert answer.status == 200 and answer.body().startswith(b"%PDF-")
    assert "开始办理" in page.locator("table.history").inner_text()
    page.get_by_role("link", name="市民政局").first.click()
    expect(page.get_by_role("heading", name="市民政局 · 待办事项")).to_be_visible(timeout=WAIT_MS)
    assert page.locator("table.todo tbody tr").count() > 0


def test_training_person_times_render(up: CsoUp, page: Any) -> None:
    sign_in(page, base(up), token(up, "5106", "planner"))
    page.get_by_role("link", name="培训人次", exact=True).first.click()
    page.wait_for_url(f"{base(up)}/training/5106")
    expect(page.get_by_role("heading", name=re.compile("骨干人才培训人次"))).to_be_visible(timeout=WAIT_MS)
    assert "广汉市" in page.locator("table.figures").first.inner_text()


def test_the_behind_list_leads_to_a_community(up: CsoUp, page: Any) -> None:
    sign_in(page, base(up), token(up, "5111", "planner"))
    page.get_by_role("link", name="落后名单").first.click()
    page.wait_for_url(f"{base(up)}/behind/5111")
    expect(page.get_by_role("heading", name=re.compile("落后名单"))).to_be_visible(timeout=WAIT_MS)
    # One target's list, in full.
    page.get_by_role("link", name="全市城市社区平均拥有社区社会组织不少于12个").click()
    page.wait_for_url(re.compile(r"/behind/5111\?target=leshan-avg-urban"))
    section = page.locator("section.behind-target")
    assert section.count() == 1
    assert re.search(r"社区（村）：适用 \d+ 个，落后 \d+ 个", section.inner_text())
    link = section.locator("table.behind a").last
    name = link.inner_text()
    link.click()
    expect(page.get_by_role("heading", name=re.compile(name))).to_be_visible(timeout=WAIT_MS)


def test_the_inbox_of_the_signed_in_official(up: CsoUp, page: Any) -> None:
    sign_in(page, base(up), token(up, "510681", "subscriber", sub=RECIPIENT))
    page.get_by_role("link", name="消息").click()
    expect(page.get_by_role("heading", name=re.compile(f"{RECIPIENT} · 未读 1"))).to_be_visible(timeout=WAIT_MS)
    page.get_by_role("button", name="标为已读").first.click()
    page.wait_for_url(f"{base(up)}/inbox")
    expect(page.get_by_role("heading", name=re.compile("未读 0"))).to_be_visible(timeout=WAIT_MS)
    # Sign-out ends it: the next page asks to sign in again.
    page.get_by_role("button", name="退出登录").click()
    page.wait_for_url(re.compile(r"/login$"))
    page.goto(f"{base(up)}/inbox")
    assert "/login?next=" in page.url


def test_a_form_from_another_site_is_refused(up: CsoUp) -> None:
    tok = token(up, "510681", "subscriber", sub=RECIPIENT)
    with httpx.Client(trust_env=False, timeout=30, base_url=base(up)) as http:
        answer = http.post("/inbox/00000000-0000-0000-0000-000000000000/read", cookies={"cso_console": tok},
                           headers={"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"})
        assert answer.status_code == 403 and "其他网站" in answer.text
        # A change is never made by GET.
        assert http.get("/inbox/00000000-0000-0000-0000-000000000000/read",
                        cookies={"cso_console": tok}).status_code == 405


def test_a_clerk_uploads_a_sheet_checks_it_then_applies_its_good_rows(up: CsoUp, page: Any) -> None:
    community = "510681001011"   # not the seeded one, whose count the drill-down test reads
    rows = [["类型", "组织名称", "社区代码", "类别", "备案日期", "统一社会信用代码", "组织形式", "登记日期"],
            ["备案", "北街社区棋艺社", community, "文体活动", "2024-04-01", "", "", ""],
            ["备案", "北街社区邻里帮", community, "邻里互助", "2024-04-02", "", "", ""],
            ["备案", "北街社区杂事会", community, "其他", "2024-04-03", "", "", ""]]
    sheet = {"name": "北街社区.csv", "mimeType": "text/csv",
             "buffer": "\n".join(",".join(r) for r in rows).encode("gb18030")}

    def orgs() -> float:
        with httpx.Client(trust_env=False, timeout=30) as http:
            return float(http.get(f"{up.url('targets')}/coverage/{community}").json()["figures"].get("orgs") or 0)

    before = orgs()
    sign_in(page, base(up), token(up, "510681", "registrar", sub="guanghan.clerk"))
    page.get_by_role("link", name="上传表格").click()
    page.wait_for_url(f"{base(up)}/upload")
    href = page.get_by_role("link", name=re.compile("下载表格模板")).get_attribute("href")
    template = page.request.get(base(up) + href)
    assert template.status == 200 and template.body().startswith(b"PK")   # an xlsx, from registry
    # The dry run: the bad row named by sheet, row, field and reason; nothing applied.
    page.set_input_files("#file", sheet)
    page.get_by_role("button", name="核验（不导入）").click()
    page.wait_for_load_state()
    assert "核验结果（未导入）" in page.locator("section.upload-result h2").inner_text()
    assert "可导入 2 行，拒绝 1 行" in page.locator("p.counts").inner_text()
    assert page.locator("table.verdicts tbody tr").count() == 1
    cells = page.locator("table.verdicts tbody tr td").all_inner_texts()
    assert cells[:3] == ["CSV", "4", "类别（category）"] and "其他" in cells[3]
    # Apply only the good rows (the box ticked): the community's organizations rise by two.
    page.set_input_files("#file", sheet)
    page.get_by_label(re.compile("只导入无误的行")).check()
    page.get_by_role("button", name="导入", exact=True).click()
    page.wait_for_load_state()
    assert "已导入" in page.locator("section.upload-result h2").inner_text()
    assert "已导入 2 行，拒绝 1 行" in page.locator("p.counts").inner_text()
    deadline = time.monotonic() + 60
    while orgs() != before + 2:
        assert time.monotonic() < deadline, f"targets never counted the imported organizations of {community}"
        time.sleep(0.3)
    # The same sheet again changes nothing.
    page.set_input_files("#file", sheet)
    page.get_by_label(re.compile("只导入无误的行")).check()
    page.get_by_role("button", name="导入", exact=True).click()
    page.wait_for_load_state()
    assert "此前已导入 2 行，拒绝 1 行" in page.locator("p.counts").inner_text()
    assert orgs() == before + 2
