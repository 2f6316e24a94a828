"""The console in process, its services stood in for by httpx.MockTransport: sign-in, scoping,
cross-site forms, the token forwarded, the access classes; and its pure helpers. The browser tests
(tests/browser) run the same on a live stack in Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from cso.auth import unclassified
from cso.settings import Settings
from cso.tokens import claims, mint
from services.console import labels
from services.console.app import _local, ancestors, create_app
from services.console.session import COOKIE
from services.console.upstream import Urls

SECRET = "s" * 40
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
COUNTY = {"code": "510681", "name": "广汉市", "tier": "county", "kind": None, "parent_code": "5106",
          "counters": {"streets": 3}, "figures": {"orgs": 12.0, "streets_with_base_share": 0.5},
          "as_of": None, "targets": [], "children": []}


def tok(region: str, sub: str = "clerk", ttl: int = 600) -> str:
    return mint(SECRET, claims(["planner"], region, sub, ttl))


@pytest.fixture()
def seen() -> list[httpx.Request]:
    return []


@pytest.fixture()
def client(seen: list[httpx.Request]) -> Iterator[TestClient]:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.startswith("/coverage/") and request.url.path.endswith("/series"):
            return httpx.Response(200, json=[{"month": "2024-01-01", "value": 1}, {"month": "2024-02-01", "value": 2}])
        if request.url.path.startswith("/coverage/"):
            code = request.url.path.split("/")[2]
            return httpx.Response(200, json={**COUNTY, "code": code, "children": [
                {**COUNTY, "code": code + "001", "name": "<script>alert(1)</script>街道", "tier": "township"}]})
        if request.url.path == "/targets":
            return httpx.Response(200, json=[{"id": "t", "spec": {"scope_region": "5111"}},
                                             {"id": "u", "spec": {"scope_region": "510681"}}])
        if request.url.path == "/imports/template.xlsx":
            return httpx.Response(200, content=b"PK-template", headers={
                "content-type": XLSX, "content-disposition": 'attachment; filename="organizations.xlsx"'})
        if request.url.path == "/imports":
            if request.content == b"not a sheet":
                return httpx.Response(422, json={"ok": False, "errors": [{"field": "file", "message": "not a sheet"}]})
            dry = request.url.params["dry_run"] == "true"
            partial = request.url.params["partial"] == "true"
            status = 200 if dry else 207 if partial else 422
            good = "ok" if dry else "applied" if partial else "held"
            bad = {"sheet": "备案", "row": 3, "kind": "filing", "status": "refused", "header": "类别",
                   "field": "category", "reason": "'其他' is not one of 为民服务、<b>公益慈善</b>"}
            return httpx.Response(status, json={
                "ok": False, "dry_run": dry, "partial": partial, "rows": 2, "applied": status == 207,
                "counts": {"ok": 0, "applied": 0, "already_applied": 0, "held": 0, "refused": 1, good: 1},
                "refused": [bad], "ignored_sheets": [], "ignored_columns": [],
                "verdicts": [{"sheet": "备案", "row": 2, "kind": "filing", "status": good}, bad]})
        return httpx.Response(404, json={"ok": False, "errors": [{"field": "path", "message": "nothing here"}]})

    settings = Settings(auth="jwt", jwt_secret=SECRET)
    urls = Urls(registry="http://r", targets="http://t", training="http://tr", notify="http://n")
    app = create_app(settings, urls, httpx.MockTransport(answer))
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        yield c


def signed(client: TestClient, token: str) -> TestClient:
    client.cookies.set(COOKIE, token)
    return client


def test_every_route_declares_an_access_class() -> None:
    app = create_app(Settings(auth="jwt", jwt_secret=SECRET))
    assert unclassified(app) == []


def test_without_sign_in_a_page_redirects_to_sign_in(client: TestClient) -> None:
    answer = client.get("/regions/510681")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fregions%2F510681"
    assert "登录" in client.get("/login").text


def test_sign_in_sets_a_strict_http_only_cookie_and_forwards_the_token(client: TestClient,
                                                                        seen: list[httpx.Request]) -> None:
    token = tok("510681")
    answer = client.post("/login", data={"token": token, "next": "/regions/510681"})
    assert answer.status_code == 303 and answer.headers["location"] == "/regions/510681"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}={token}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = signed(client, token).get("/regions/510681")
    assert page.status_code == 200 and "广汉市" in page.text and "街道孵化基地覆盖率" in page.text
    assert seen and all(r.headers["authorization"] == f"Bearer {token}" for r in seen)
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_a_bad_token_is_refused_naming_what_is_wrong(client: TestClient) -> None:
    answer = client.post("/login", data={"token": mint("x" * 40, claims(["planner"], "51", "a", 60))})
    assert answer.status_code == 401 and "令牌无效" in answer.text and "token" in answer.text
    assert COOKIE not in answer.headers.get("set-cookie", "")


def test_sign_in_goes_back_only_to_the_console_itself() -> None:
    assert _local("/plans") == "/plans"
    for elsewhere in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "plans"):
        assert _local(elsewhere) == "/"


def test_a_region_outside_the_token_is_refused_before_any_service_is_asked(
        client: TestClient, seen: list[httpx.Request]) -> None:
    for code in ("511102", "5106", "51"):
        answer = signed(client, tok("510681")).get(f"/regions/{code}")
        assert answer.status_code == 403 and f"{code} 不在您的辖区（510681）内" in answer.text
    assert seen == []
    assert signed(client, tok("510681")).get("/regions/510681001").status_code == 200


def test_an_expired_token_signs_out(client: TestClient) -> None:
    answer = signed(client, tok("510681", ttl=-120)).get("/regions/510681")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert f'{COOKIE}=""' in answer.headers["set-cookie"]


def test_a_post_from_another_site_is_refused(client: TestClient, seen: list[httpx.Request]) -> None:
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = signed(client, tok("510681")).post("/inbox/1/read", headers=headers)
        assert answer.status_code == 403 and "其他网站" in answer.text
    assert seen == []


def test_a_services_refusal_is_shown_with_its_reason(client: TestClient) -> None:
    answer = signed(client, tok("510681")).get("/plans/nope")
    assert answer.status_code == 404 and "targets：path: nothing here" in answer.text


def test_numbers_and_trends_as_an_official_reads_them() -> None:
    assert labels.number(0.625, "streets_with_hub_share") == "62.5%"
    assert labels.number(1.0, "towns_with_base_share") == "100%"
    assert labels.number(0.0, "share") == "0%"
    assert labels.number(3.254, "avg_orgs_per_urban_community") == "3.25"
    assert labels.number(1204.0, "orgs") == "1,204"
    assert labels.number(None, "party_covered_share") == "—"
    assert labels.trend([{"value": 1}, {"value": 2}]) == "↑"
    assert labels.trend([{"value": 2}, {"value": 1}]) == "↓"
    assert labels.trend([{"value": 2}, {"value": 2}]) == "→"
    assert labels.trend([{"value": 2}]) == "—"
    assert labels.label(labels.FIGURES, "a_new_figure") == "a_new_figure"


def test_the_breadcrumb_stays_within_the_token() -> None:
    assert ancestors("510681001014", "") == ["51", "5106", "510681", "510681001"]
    assert ancestors("510681001014", "510681") == ["510681", "510681001"]


def test_a_day_is_asked_of_targets_and_kept_down_the_tree(client: TestClient, seen: list[httpx.Request]) -> None:
    page = signed(client, tok("510681")).get("/regions/510681?as_of=2024-03-15")
    assert page.status_code == 200
    assert [r.url.params.get("as_of") for r in seen if not r.url.path.endswith("/series")] == ["2024-03-15"]
    assert 'href="/regions/510681001?as_of=2024-03-15"' in page.text
    assert "/regions/510681001/children?depth=2&amp;as_of=2024-03-15" in page.text


def test_what_the_services_answer_is_escaped(client: TestClient) -> None:
    page = signed(client, tok("510681")).get("/regions/510681")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;街道" in page.text


def test_home_is_the_officials_own_region_or_for_a_national_one_the_provinces(client: TestClient) -> None:
    answer = signed(client, tok("510681")).get("/")
    assert answer.status_code == 303 and answer.headers["location"] == "/regions/510681"
    page = signed(client, tok("00")).get("/")
    assert page.status_code == 200 and '<a href="/regions/51">' in page.text


def test_every_figure_targets_computes_has_a_chinese_name() -> None:
    from services.targets.domain.metrics import FIGURES

    assert set(FIGURES) - set(labels.FIGURES) == set()


def test_the_upload_page_offers_the_template_from_registry(client: TestClient, seen: list[httpx.Request]) -> None:
    token = tok("510681")   # once: a token minted a second later is another (its iat)
    page = signed(client, token).get("/upload")
    assert page.status_code == 200 and '<a href="/upload">上传表格</a>' in page.text
    assert 'enctype="multipart/form-data"' in page.text and 'href="/upload/template.xlsx"' in page.text
    template = client.get("/upload/template.xlsx")
    assert template.status_code == 200 and template.content == b"PK-template"
    assert template.headers["content-type"] == XLSX and "organizations.xlsx" in template.headers["content-disposition"]
    assert seen[-1].url.path == "/imports/template.xlsx"
    assert seen[-1].headers["authorization"] == f"Bearer {token}"


def test_an_uploaded_file_goes_to_registry_as_the_body_and_each_refused_row_is_shown(
        client: TestClient, seen: list[httpx.Request]) -> None:
    sheet = "类型,组织名称\n备案,西城舞蹈队\n".encode("gb18030")
    files = {"file": ("orgs.csv", sheet, "text/csv")}
    token = tok("510681")   # once: a token minted a second later is another (its iat)
    dry = signed(client, token).post("/upload", files=files, data={"action": "dry_run"})
    assert dry.status_code == 200, dry.text
    sent = seen[-1]
    assert (sent.method, sent.url.path, sent.content) == ("POST", "/imports", sheet)
    assert dict(sent.url.params) == {"dry_run": "true", "partial": "false"}
    assert sent.headers["authorization"] == f"Bearer {token}"
    assert "核验结果（未导入）" in dry.text and "可导入 1 行，拒绝 1 行" in dry.text
    assert "<td>备案</td><td class=\"num\">3</td>" in dry.text and "类别（category）" in dry.text
    assert "&lt;b&gt;公益慈善&lt;/b&gt;" in dry.text   # registry's words are escaped
    # Apply, all or nothing: registry's 422 with verdicts is a result, not an error page.
    held = client.post("/upload", files=files, data={"action": "apply"})
    assert held.status_code == 200 and "未导入（表中有错误行） 1 行" in held.text
    assert dict(seen[-1].url.params) == {"dry_run": "false", "partial": "false"}
    done = client.post("/upload", files=files, data={"action": "apply", "partial": "true"})
    assert done.status_code == 200 and "已导入 1 行" in done.text
    assert dict(seen[-1].url.params) == {"dry_run": "false", "partial": "true"}


def test_an_upload_without_a_file_or_one_registry_cannot_read_is_refused_naming_why(
        client: TestClient, seen: list[httpx.Request]) -> None:
    none = signed(client, tok("510681")).post("/upload", data={"action": "dry_run"})
    assert none.status_code == 422 and "file：请选择要上传的表格" in none.text and seen == []
    empty = client.post("/upload", files={"file": ("a.csv", b"", "text/csv")}, data={"action": "dry_run"})
    assert empty.status_code == 422 and "是空的" in empty.text and seen == []
    odd = client.post("/upload", files={"file": ("a.csv", b"x", "text/csv")}, data={"action": "drop"})
    assert odd.status_code == 422 and "action" in odd.text and seen == []
    unread = client.post("/upload", files={"file": ("a.txt", b"not a sheet", "text/plain")})
    assert unread.status_code == 422 and "registry：file: not a sheet" in unread.text
    # Never by GET, never from another site.
    assert client.get("/upload?action=apply").status_code == 200   # the form only
    cross = client.post("/upload", files={"file": ("a.csv", b"x", "text/csv")}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and len(seen) == 1
