"""The HTTP port (control_plane/http) in process: a real control plane on port 0 with
`http_port=0`, called with plain HTTP/1.1 requests (Connect JSON, Connect streaming, gRPC-Web)
and, over HTTP/2, with the SDK's gRPC client pointed at the HTTP port.

Each check holds the HTTP answer against what the gRPC port answers for the same call: the
same code, the same ErrorInfo reason, the same BadRequest field, the same owner scope.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import pathlib
import struct
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane._server import StartupError
from tether.control_plane.http import _console
from tether.v1 import admin_service_pb2, session_service_pb2

APP_ORIGIN = "http://app.example:5173"

# Connect's HTTP status for each code (connectrpc.com/docs/protocol#error-codes).
HTTP_STATUS = {"unauthenticated": 401, "permission_denied": 403, "invalid_argument": 400, "not_found": 404}


class Http:
    """Blocking HTTP/1.1 calls, run on a thread so the in-process control plane keeps serving."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(self._request, method, path, body, headers)

    async def call(self, method: str, body: dict, key: str = "", owner: str = "", origin: str = "") -> tuple[int, dict]:
        """A Connect unary call with JSON: (HTTP status, the JSON answer)."""
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        if owner:
            headers["x-tether-owner"] = owner
        if origin:
            headers["origin"] = origin
        status, _, data = await self.request("POST", method, json.dumps(body).encode(), headers)
        return status, json.loads(data)


def details(answer: dict) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest fields) from a Connect error's details."""
    reason, fields = "", []
    for detail in answer.get("details", []):
        value = base64.b64decode(detail["value"] + "==")
        if detail["type"] == "google.rpc.ErrorInfo":
            reason = error_details_pb2.ErrorInfo.FromString(value).reason
        elif detail["type"] == "google.rpc.BadRequest":
            fields = [v.field for v in error_details_pb2.BadRequest.FromString(value).field_violations]
    return reason, fields


async def grpc_error(target: str, method: str, request: bytes, metadata: tuple = ()) -> tuple[str, str, list[str]]:
    """The gRPC port's answer to the same call: (code as Connect names it, reason, fields)."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await channel.unary_unary(method)(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            status = status_pb2.Status()
            for key, value in err.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    status = status_pb2.Status.FromString(value)
            reason, fields = "", []
            for d in status.details:
                if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    d.Unpack(info)
                    reason = info.reason
                elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    d.Unpack(bad)
                    fields = [v.field for v in bad.field_violations]
            return err.code().name.lower(), reason, fields
    raise AssertionError(f"{method} succeeded over gRPC")


def envelopes(data: bytes) -> list[tuple[int, bytes]]:
    """A Connect or gRPC-Web stream body as (flags, payload) frames."""
    frames = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        frames.append((flags, data[5 : 5 + size]))
        data = data[5 + size :]
    return frames


@pytest.fixture
async def cp(tmp_path: pathlib.Path) -> AsyncIterator[ControlPlane]:
    settings = Settings(
        port=0,
        http_port=0,
        db=str(tmp_path / "tether.db"),
        timings=FAST,
        http_cors_origins=(APP_ORIGIN,),
    )
    async with ControlPlane(settings) as control_plane:
        yield control_plane


@pytest.fixture
def web(cp: ControlPlane) -> Http:
    assert cp.http is not None and cp.http.port
    return Http(cp.http.port)


# -- authentication, errors and owner scope: as on the gRPC port ----------------------------


async def test_auth_failures_answer_as_the_grpc_port_does(cp: ControlPlane, web: Http) -> None:
    backend = await cp.create_api_key("backend")
    worker_ish = "tok_" + "x" * 40
    target = f"127.0.0.1:{cp.port}"
    method = "/tether.v1.SessionService/ListSessions"
    cases = [
        ("no key", "", "", "unauthenticated"),
        ("a key this control plane never issued", "tk_" + "0" * 40, "", "unauthenticated"),
        ("a token that is not an API key", worker_ish, "", "unauthenticated"),
        ("a backend key without x-tether-owner", backend, "", "invalid_argument"),
    ]
    for what, key, owner, code in cases:
        status, answer = await web.call(method, {}, key=key, owner=owner)
        metadata = tuple((k, v) for k, v in (("authorization", f"Bearer {key}" if key else ""),) if v)
        over_grpc = await grpc_error(target, method, b"", metadata)
        assert (answer["code"], *details(answer)) == over_grpc, what
        assert answer["code"] == code, (what, answer)
        assert status == HTTP_STATUS[code], (what, status)
        assert answer["message"], what
    # The backend key's missing owner is named as the field to fix.
    status, answer = await web.call(method, {}, key=backend)
    assert details(answer) == ("INVALID_ARGUMENT", ["x-tether-owner"])
    # ... and with the owner named, the backend key works.
    status, answer = await web.call(method, {}, key=backend, owner="alice")
    assert status == 200 and answer == {}


async def test_one_owner_cannot_see_anothers_session(cp: ControlPlane, web: Http) -> None:
    alice, bob = await cp.create_api_key("owner", "alice"), await cp.create_api_key("owner", "bob")
    status, created = await web.call("/tether.v1.SessionService/CreateSession", {"runtime": "shell"}, key=alice)
    assert status == 200 and created["session"]["owner"] == "alice"
    session_id = created["session"]["sessionId"]
    status, got = await web.call("/tether.v1.SessionService/GetSession", {"sessionId": session_id}, key=alice)
    assert status == 200 and got["session"]["sessionId"] == session_id
    status, answer = await web.call("/tether.v1.SessionService/GetSession", {"sessionId": session_id}, key=bob)
    assert (status, answer["code"], details(answer)[0]) == (404, "not_found", "SESSION_NOT_FOUND")
    status, listed = await web.call("/tether.v1.SessionService/ListSessions", {}, key=bob)
    assert status == 200 and listed.get("sessions", []) == []
    # An owner key cannot act for someone else by naming them.
    status, answer = await web.call("/tether.v1.SessionService/ListSessions", {}, key=bob, owner="alice")
    assert (status, answer["code"]) == (403, "permission_denied")


async def test_invalid_requests_name_the_field(cp: ControlPlane, web: Http) -> None:
    key = await cp.create_api_key("owner", "alice")
    status, answer = await web.call("/tether.v1.SessionService/CreateSession", {"runtime": ""}, key=key)
    assert (status, answer["code"], details(answer)) == (400, "invalid_argument", ("INVALID_ARGUMENT", ["runtime"]))
    over_grpc = await grpc_error(
        f"127.0.0.1:{cp.port}",
        "/tether.v1.SessionService/CreateSession",
        session_service_pb2.CreateSessionRequest(runtime="").SerializeToString(),
        (("authorization", f"Bearer {key}"),),
    )
    assert over_grpc == ("invalid_argument", "INVALID_ARGUMENT", ["runtime"])
    assert answer["message"] == "runtime: is required"
    # JSON that is not the request message, and protobuf bytes that are not one.
    bad_json = await web.request(
        "POST",
        "/tether.v1.SessionService/GetSession",
        b"{not json",
        {"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    bad_proto = await web.request(
        "POST",
        "/tether.v1.SessionService/GetSession",
        b"\xff\xff\xff",
        {"content-type": "application/proto", "authorization": f"Bearer {key}"},
    )
    for status, _, body in (bad_json, bad_proto):
        answer = json.loads(body)
        assert (status, answer["code"], details(answer)) == (400, "invalid_argument", ("INVALID_ARGUMENT", ["request"]))
        assert "tether.v1.GetSessionRequest" in answer["message"]


async def test_every_method_of_both_services_is_served(cp: ControlPlane, web: Http) -> None:
    """Each method answers from its servicer (a result, or an error carrying the servicer's
    ErrorInfo), none with 404 or unimplemented."""
    key = await cp.create_api_key("admin")
    headers = {"authorization": f"Bearer {key}", "x-tether-owner": "alice"}
    services = [
        session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
        admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
    ]
    served = []
    for service in services:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if method.client_streaming or method.server_streaming:
                # Connect streaming: one enveloped JSON message, or none for a client stream.
                body = b"" if method.client_streaming else struct.pack(">BI", 0, 2) + b"{}"
                status, _, data = await web.request(
                    "POST", path, body, {**headers, "content-type": "application/connect+json"}
                )
                assert status == 200, (path, status, data)
                end = json.loads(envelopes(data)[-1][1])
                error = end.get("error")
            else:
                status, _, data = await web.request(
                    "POST", path, b"{}", {**headers, "content-type": "application/json"}
                )
                error = json.loads(data) if status != 200 else None
            if error is not None:
                assert error["code"] not in ("unimplemented", "not_found") or details(error)[0], (path, error)
                assert details(error)[0], (path, error)  # the servicer's ErrorInfo: it ran
            served.append(method.name)
    assert {"CreateSession", "StreamSessionEvents", "ImportSession", "ListWorkers", "CreatePairingCode"} <= set(served)


async def test_get_and_unknown_paths_are_refused(web: Http) -> None:
    status, headers, body = await web.request("GET", "/tether.v1.SessionService/ListSessions")
    assert (status, headers["allow"]) == (405, "POST")
    assert "POST" in json.loads(body)["message"]
    status, _, body = await web.request(
        "POST", "/tether.v1.WorkerService/Register", b"{}", {"content-type": "application/json"}
    )
    assert status == 404  # the worker API stays on the gRPC port
    status, _, _ = await web.request("GET", "/")
    assert status == 404


# -- streaming ---------------------------------------------------------------------------


def _subscribers(cp: ControlPlane, session_id: str) -> int:
    assert cp.hub is not None
    return cp.hub._sessions.get(session_id).log.subscribers


async def test_connect_stream_over_http1_follows_and_ends_when_the_client_goes(cp: ControlPlane, web: Http) -> None:
    key = await cp.create_api_key("owner", "alice")
    _, created = await web.call("/tether.v1.SessionService/CreateSession", {"runtime": "shell"}, key=key)
    session_id = created["session"]["sessionId"]
    _, sent = await web.call(
        "/tether.v1.SessionService/SendInput", {"sessionId": session_id, "input": "echo hi"}, key=key
    )
    request = json.dumps({"sessionId": session_id, "afterSeq": "0"}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=15)

    def open_stream() -> bytes:
        conn.request(
            "POST",
            "/tether.v1.SessionService/StreamSessionEvents",
            body=struct.pack(">BI", 0, len(request)) + request,
            headers={"content-type": "application/connect+json", "authorization": f"Bearer {key}"},
        )
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type") == "application/connect+json"
        flags, size = struct.unpack(">BI", resp.read(5))
        return resp.read(size)

    first = json.loads(await asyncio.to_thread(open_stream))
    event = first["events"][0]
    assert (event["seq"], event["turnId"], "inputReceived" in event["body"]) == ("1", sent["turn"]["turnId"], True)
    assert _subscribers(cp, session_id) == 1  # no worker: the stream waits for more
    conn.close()  # the browser tab goes away
    await eventually(lambda: _subscribers(cp, session_id) == 0, 5, "the stream to end with its client")


def grpc_web_trailer(frames: list[tuple[int, bytes]]) -> dict[str, str]:
    """The gRPC-Web trailer frame (flag 0x80) as a dict of lower-case names."""
    flags, payload = frames[-1]
    assert flags & 0x80, frames
    pairs = (line.split(":", 1) for line in payload.decode().split("\r\n") if line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


async def test_grpc_web_stream_ends_with_its_status_in_the_body(cp: ControlPlane, web: Http) -> None:
    key = await cp.create_api_key("owner", "alice")
    _, created = await web.call("/tether.v1.SessionService/CreateSession", {"runtime": "shell"}, key=key)
    session_id = created["session"]["sessionId"]
    await web.call("/tether.v1.SessionService/SendInput", {"sessionId": session_id, "input": "x"}, key=key)
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "authorization": f"Bearer {key}"}

    async def stream(request: session_service_pb2.StreamSessionEventsRequest) -> list[tuple[int, bytes]]:
        raw = request.SerializeToString()
        status, answer_headers, body = await web.request(
            "POST", "/tether.v1.SessionService/StreamSessionEvents", struct.pack(">BI", 0, len(raw)) + raw, headers
        )
        assert status == 200 and answer_headers["content-type"] == "application/grpc-web+proto"
        return envelopes(body)

    frames = await stream(session_service_pb2.StreamSessionEventsRequest(session_id=session_id, stop_at_end=True))
    batch = session_service_pb2.StreamSessionEventsResponse.FromString(frames[0][1])
    assert [e.seq for e in batch.events] == [1]
    assert grpc_web_trailer(frames)["grpc-status"] == "0"
    # An error travels in the trailer frame too, with its google.rpc.Status details.
    frames = await stream(session_service_pb2.StreamSessionEventsRequest(session_id=""))
    trailer = grpc_web_trailer(frames)
    assert trailer["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    status = status_pb2.Status.FromString(base64.b64decode(trailer["grpc-status-details-bin"] + "=="))
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad) and [v.field for v in bad.field_violations] == ["session_id"]


async def test_grpc_over_http2_on_the_http_port(cp: ControlPlane) -> None:
    """The SDK's gRPC client, pointed at the HTTP port: gRPC over h2c, server streaming included."""
    assert cp.http is not None
    key = await cp.create_api_key("owner", "alice")
    async with sdk.AsyncClient(f"127.0.0.1:{cp.http.port}", api_key=key) as client:
        session = await client.create_session("shell")
        turn = await client.send_input(session.session_id, "echo over h2")
        async for event in client.stream_events(session.session_id, after_seq=0, reconnect=False):
            assert (event.seq, event.turn_id, event.kind) == (1, turn.turn_id, sdk.EventKind.INPUT_RECEIVED)
            break
        with pytest.raises(sdk.NotFoundError) as caught:
            await client.get_session("ses_missing")
        assert caught.value.reason == "SESSION_NOT_FOUND"


# -- CORS ---------------------------------------------------------------------------------


async def test_cors_preflight_and_origins(cp: ControlPlane, web: Http) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, connect-protocol-version",
    }
    path = "/tether.v1.SessionService/ListSessions"
    status, headers, _ = await web.request("OPTIONS", path, headers={**preflight, "origin": APP_ORIGIN})
    assert status == 204
    assert headers["access-control-allow-origin"] == APP_ORIGIN
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "x-tether-owner", "content-type", "connect-protocol-version", "x-grpc-web"} <= allowed
    status, headers, body = await web.request("OPTIONS", path, headers={**preflight, "origin": "https://evil.example"})
    assert status == 403 and "access-control-allow-origin" not in headers
    assert "--http-cors-origin" in json.loads(body)["message"]
    # The call itself: served with the headers a page needs from an allowed origin, refused
    # (before it runs) from any other, and served from the port's own origin (the console).
    key = await cp.create_api_key("owner", "alice")
    status, headers, _ = await web.request(
        "POST",
        path,
        b"{}",
        {"content-type": "application/json", "authorization": f"Bearer {key}", "origin": APP_ORIGIN},
    )
    assert status == 200 and headers["access-control-allow-origin"] == APP_ORIGIN
    assert "grpc-status-details-bin" in headers["access-control-expose-headers"]
    status, _, _ = await web.request(
        "POST",
        "/tether.v1.SessionService/CreateSession",
        b'{"runtime":"shell"}',
        {"content-type": "application/json", "authorization": f"Bearer {key}", "origin": "https://evil.example"},
    )
    assert status == 403
    _, listed = await web.call(path, {}, key=key)
    assert listed == {}  # the refused CreateSession made nothing
    status, headers, _ = await web.request(
        "POST",
        path,
        b"{}",
        {
            "content-type": "application/json",
            "authorization": f"Bearer {key}",
            "origin": f"http://127.0.0.1:{web.port}",
        },
    )
    assert status == 200 and "access-control-allow-origin" not in headers


# -- the console --------------------------------------------------------------------------


async def test_console_is_off_by_default(web: Http) -> None:
    status, _, _ = await web.request("GET", "/console/")
    assert status == 404


async def test_console_serves_its_files(tmp_path: pathlib.Path) -> None:
    site = tmp_path / "console"
    (site / "assets").mkdir(parents=True)
    (site / "index.html").write_text("<!doctype html><title>Tether</title>")
    (site / "assets" / "app.js").write_text("console.log('tether')")
    (site / "assets" / "app.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not for the web")
    settings = Settings(
        port=0, http_port=0, db=str(tmp_path / "t.db"), timings=FAST, console=True, console_dir=str(site)
    )
    async with ControlPlane(settings) as cp:
        assert cp.http is not None
        web = Http(cp.http.port)
        status, headers, body = await web.request("GET", "/console/")
        assert (status, headers["content-type"], body) == (
            200,
            "text/html; charset=utf-8",
            b"<!doctype html><title>Tether</title>",
        )
        status, headers, _ = await web.request("GET", "/console/assets/app.js")
        assert status == 200 and headers["content-type"].startswith(("text/javascript", "application/javascript"))
        status, headers, _ = await web.request("GET", "/console/assets/app.css")
        assert status == 200 and headers["content-type"].startswith("text/css")
        status, headers, _ = await web.request("GET", "/console")
        assert (status, headers["location"]) == (308, "/console/")
        for missing in (
            "/console/nope.js",
            "/console/../secret.txt",
            "/console/%2e%2e/secret.txt",
            "/console/assets/../../secret.txt",
        ):
            status, _, body = await web.request("GET", missing)
            assert status == 404 and b"not for the web" not in body, missing


async def test_console_not_built_is_a_clear_startup_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_console, "PACKAGED_CONSOLE", tmp_path / "not-built")
    settings = Settings(port=0, http_port=0, db=str(tmp_path / "t.db"), timings=FAST, console=True)
    with pytest.raises(StartupError, match="run `make web`"):
        async with ControlPlane(settings):
            pass
    assert not (tmp_path / "t.db").exists()  # refused before the database was opened
    settings = Settings(port=0, http_port=0, db=str(tmp_path / "t.db"), console=True, console_dir=str(tmp_path))
    with pytest.raises(StartupError, match=f"no web console at {tmp_path}"):
        async with ControlPlane(settings):
            pass


# -- replicas -----------------------------------------------------------------------------


async def test_a_replica_that_does_not_serve_answers_unavailable(cp: ControlPlane, web: Http) -> None:
    """A follower (here: a replica whose hub is not serving) refuses before reading the request;
    the HTTP port does not relay to the leader."""
    key = await cp.create_api_key("owner", "alice")
    cp.serving = False
    try:
        status, answer = await web.call("/tether.v1.SessionService/CreateSession", {"runtime": "shell"}, key=key)
    finally:
        cp.serving = True
    assert (status, answer["code"]) == (503, "unavailable")
    assert f"replica {cp.replica_id} is not serving" in answer["message"]
    status, listed = await web.call("/tether.v1.SessionService/ListSessions", {}, key=key)
    assert status == 200 and listed == {}  # the refused call made nothing
