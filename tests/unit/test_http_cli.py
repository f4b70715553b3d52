"""`tether serve`'s HTTP flags are checked before anything starts: each bad combination names
the flag to fix."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tether.control_plane.cli import serve


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--console"], "needs the HTTP port: add --http-port"),
        (["--http-port", "0", "--console-dir", "."], "only means something with --console"),
        (["--http-port", "0", "--http-cors-origin", "app.example.com"], "expected an origin such as"),
        (["--http-port", "0", "--http-cors-origin", "https://app.example.com/path"], "expected an origin such as"),
        (["--http-port", "0", "--http-cors-origin", "*"], "expected an origin such as"),
        (["--http-port", "0", "--http-host", "0.0.0.0", "--dev"], "must then bind a loopback address"),
        (["--http-port", "70000"], "70000 is not in the range 0<=x<=65535"),
    ],
)
def test_bad_http_flags_are_refused_with_the_flag_named(args: list[str], says: str, tmp_path) -> None:
    result = CliRunner().invoke(serve, [*args, "--db", str(tmp_path / "t.db")])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not (tmp_path / "t.db").exists()


def test_http_flags_come_from_the_environment_too(tmp_path) -> None:
    result = CliRunner().invoke(
        serve, ["--db", str(tmp_path / "t.db")], env={"TETHER_CONSOLE": "1", "TETHER_HTTP_CORS_ORIGIN": ""}
    )
    assert result.exit_code == 2 and "needs the HTTP port: add --http-port" in result.output
