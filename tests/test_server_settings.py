"""`kvserve serve` settings: every field a flag and a KVSERVE_* variable, flags over the
environment over defaults; `kvserve models` lists and validates a model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_core.recipes import bundled_dir
from server.cli import build_parser, main
from server.serve_command import settings_from
from server.settings import ServerSettings


def test_every_setting_is_a_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ServerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in out, name
        assert f"KVSERVE_{name.upper()}" in out.replace("- ", "-"), name


def test_defaults_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ServerSettings()
    assert (defaults.host, defaults.port, defaults.devices) == ("127.0.0.1", 8000, ["cpu"])
    monkeypatch.setenv("KVSERVE_PORT", "9001")
    monkeypatch.setenv("KVSERVE_API_KEYS", "k1, k2")
    monkeypatch.setenv("KVSERVE_DEVICES", "cuda:0,cuda:1")
    monkeypatch.setenv("KVSERVE_MODELS", "text-lm")
    args = build_parser().parse_args(["serve", "--port", "9002", "--kv-budget-mb", "64"])
    settings = settings_from(args)
    assert settings.port == 9002  # the flag wins over the environment
    assert settings.key_values() == ["k1", "k2"] and settings.devices == ["cuda:0", "cuda:1"]
    assert settings.models == ["text-lm"] and "k1" not in repr(settings)  # keys stay secret
    engine = settings.engine_settings()
    assert engine.scheduler.kv_budget_bytes == 64 * 2**20
    assert engine.slots() == ["cuda:0", "cuda:1"]


def test_bad_flag_values_are_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "eighty"]) == 2
    err = capsys.readouterr().err
    assert "--port" in err and "KVSERVE_PORT" in err
    assert main(["serve", "--model-dir", "/no/such/dir"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_models_lists_and_validates_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("text-lm", "sine-regressor", "digits-seq2seq"):
        assert name in out
    shutil.copytree(bundled_dir() / "sine-regressor", tmp_path / "good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(["models", "--model-dir", str(tmp_path), "--json"]) == 1
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["good"]["status"] == "ok" and rows["good"]["kind"] == "regression"
    assert rows["broken"]["status"].startswith("error")
