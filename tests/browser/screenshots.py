"""The README's screenshots of the web console, taken in Debian's chromium from a running stack:

    .venv/bin/cso up &                      # the demo divisions; tokens on (the default)
    .venv/bin/python -m tests.browser.screenshots --seed    # from the repository's root

`--seed` first puts some history through the services' APIs (tests/browser/chromium.py `seed`:
three organizations in 西城社区, a task of Guanghan's plan started with evidence, a message in an
inbox); leave it out on a stack that has its own. Tokens are signed with the stack's key
(DATA_DIR/jwt.secret), as `cso token` does. The pictures go to docs/console/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.browser.chromium import chromium, seed, sign_in, token, url

OUT = Path(__file__).resolve().parents[2] / "docs" / "console"
# (file, the token's region, the page, what to wait for)
SHOTS = (
    ("region-tree.png", "510681", "/regions/510681", "button[aria-label='展开 雒城街道']"),
    ("behind.png", "5111", "/behind/5111?target=leshan-avg-urban&limit=8", "table.behind"),
    ("plan-ledger.png", "510681", "/plans/guanghan-2024-chuangtese", "table.ledger"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".cso"), help="the stack's data dir (default .cso)")
    parser.add_argument("--seed", action="store_true", help="put the example history in first")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data_dir = args.data_dir.absolute()
    if args.seed:
        seed(data_dir)
    base = url(data_dir, "console")
    args.out.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        for name, region, path, ready in SHOTS:
            context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
            page = context.new_page()
            sign_in(page, base, token(data_dir, region, "planner", sub="screenshot"))
            page.goto(base + path)
            page.locator(ready).first.wait_for()
            if name == "region-tree.png":  # a branch of the tree opened in place
                page.click("button[aria-label='展开 雒城街道']")
                page.locator("#row-510681001014").wait_for()
            page.screenshot(path=str(args.out / name), full_page=name == "region-tree.png")
            context.close()
            print(args.out / name)


if __name__ == "__main__":
    main()
