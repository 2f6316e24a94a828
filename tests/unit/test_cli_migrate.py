"""`cso migrate` names only the services that own a schema (the console owns none)."""

import pytest
from typer.testing import CliRunner

import cso_local.stack
from cso.settings import Settings
from cso_local.cli import app as cli


def test_migrate_all_migrates_and_names_only_the_services_with_a_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    migrated: list[str] = []

    def migrate_one(name: str, settings: Settings) -> None:
        migrated.append(name)

    monkeypatch.setattr(cso_local.stack, "migrate_one", migrate_one)
    monkeypatch.setenv("CSO_DATABASE_URL", "postgresql://cso@127.0.0.1:1/cso")
    result = CliRunner().invoke(cli, ["migrate", "--no-streams"])
    assert result.exit_code == 0, result.output
    assert migrated == ["registry", "targets", "training", "notify"]
    assert "console" not in result.output
    assert result.output.count("at the latest migration") == 4
