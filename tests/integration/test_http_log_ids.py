"""A call on the HTTP port names its session and turn in its log lines, as on the gRPC port:
the ids the request carries are bound (`tether.logs`) before the servicer runs."""

from __future__ import annotations

import pathlib

import pytest

from tests.helpers.processes import FAST
from tests.integration.test_http_api import Http
from tether import logs
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.api._session_service import SessionService


async def test_an_http_call_binds_the_session_and_turn_it_names(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []
    original = SessionService.GetTurn

    async def recording(self, request, context):  # type: ignore[no-untyped-def]
        seen.append(logs.bound())
        return await original(self, request, context)

    monkeypatch.setattr(SessionService, "GetTurn", recording)
    settings = Settings(port=0, http_port=0, db=str(tmp_path / "t.db"), timings=FAST, dev_owner="local")
    async with ControlPlane(settings) as cp:
        assert cp.http is not None
        status, answer = await Http(cp.http.port).call(
            "/tether.v1.SessionService/GetTurn", {"sessionId": "ses_logged", "turnId": "trn_logged"}
        )
    assert status == 404 and answer["code"] == "not_found"
    assert seen and seen[0]["session_id"] == "ses_logged" and seen[0]["turn_id"] == "trn_logged"
