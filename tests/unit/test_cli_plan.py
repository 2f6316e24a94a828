"""`cso plan` shows every lead unit of a task: joint leads joined as the plan writes them."""

from __future__ import annotations

from rich.console import Console

from cso_local.cli import ledger_table


def test_ledger_table_shows_joint_leads() -> None:
    body = {"plan": {"id": "guanghan-2024-chuangtese", "title": "创特色"}, "as_of": "2024-06-05",
            "completion": {"accepted": 0, "total": 1, "share": 0.0},
            "tasks": [{"no": "1.2", "state": "not_started", "overdue": True, "lead": "市委组织部",
                       "leads": ["市委组织部", "市民政局"], "deadline": "2024-05-31", "targets": [],
                       "title": "落实“四议两公开”"}]}
    console = Console(width=200, record=True)
    console.print(ledger_table(body))
    assert "市委组织部、市民政局" in console.export_text()
