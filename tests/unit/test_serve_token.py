"""Where `lineguard serve` finds its API token, and the 0600 file it writes when none is given (R5)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lineguard import LineguardError
from lineguard.edge.serve import TOKEN_ENV, resolve_token


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def test_a_new_token_is_written_owner_only_and_read_back(tmp_path: Path) -> None:
    default = tmp_path / "state" / "line1.api-token"
    token, note = resolve_token(default_file=default)
    assert len(token) >= 32 and default.read_text().strip() == token
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert note == f"new token written to {default} (mode 600)" and token not in note
    again, note2 = resolve_token(default_file=default)
    assert again == token and note2 == f"token from {default}"


def test_precedence_token_file_then_config_then_env_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "tok"
    f.write_text("from-the-file-0123456789\n")
    f.chmod(0o600)
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment-0123")
    assert resolve_token(token_file=f, token="from-the-config-01234567")[0] == "from-the-file-0123456789"
    assert resolve_token(token="from-the-config-01234567")[0] == "from-the-config-01234567"
    assert resolve_token(default_file=tmp_path / "unused")[0] == "from-the-environment-0123"
    assert not (tmp_path / "unused").exists()
    fresh = tmp_path / "fresh.token"
    token, note = resolve_token(token_file=fresh)
    assert fresh.read_text().strip() == token and "new token written" in note


def test_bad_tokens_are_one_line_errors(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(LineguardError, match="at least 16 characters"):
        resolve_token(token_file=short)
    with pytest.raises(LineguardError, match="not a regular file"):
        resolve_token(token_file=tmp_path)
    with pytest.raises(LineguardError, match=r"config's api\.token must be at least 16"):
        resolve_token(token="short")


def test_a_token_file_others_can_read_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tok"
    f.write_text("readable-by-everyone-0123\n")
    f.chmod(0o644)
    assert resolve_token(token_file=f)[0] == "readable-by-everyone-0123"
    assert "readable by others (mode 644); chmod 600 it" in capsys.readouterr().err
