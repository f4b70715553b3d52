"""The ids a request names, bound into the call's log lines (`tether.logs`): used by the gRPC
port's handler wrapper (`_server.py`) and the HTTP port's endpoints (`http/_endpoints.py`), so a
call logs its session and turn whichever port it came in on."""

from __future__ import annotations

from tether import logs


def _ids(message: object) -> dict[str, str]:
    return {
        name: value
        for name in ("session_id", "turn_id", "worker_id")
        if isinstance(value := getattr(message, name, None), str) and value
    }


def name_in_logs(request: object) -> None:
    """Bind the session and turn a request names (its own fields, or those of the message its
    oneof holds, as in a LeaseRequest) for the call's log lines, clearing those of the stream's
    previous request; a worker id it names is kept. Each call runs in its own task."""
    ids = _ids(request)
    if not ids and hasattr(request, "WhichOneof"):
        for oneof in request.DESCRIPTOR.oneofs:  # type: ignore[attr-defined]
            held = request.WhichOneof(oneof.name)
            if held:
                ids = _ids(getattr(request, held))
                break
    logs.bind(session_id=ids.get("session_id", ""), turn_id=ids.get("turn_id", ""))
    if "worker_id" in ids:
        logs.bind(worker_id=ids["worker_id"])
