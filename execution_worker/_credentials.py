"""A worker's credentials: pairing (a one-time code for a worker token) and the token file.

The file holds the token, the worker id it is bound to and the owner, as JSON readable by the
worker's OS user only. Agents the worker runs share that user: to keep them from reading it,
run the runtime in a sandbox or as another user.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from tether.sdk.channel import make_channel
from tether.v1 import worker_service_pb2, worker_service_pb2_grpc


class CredentialsRejected(Exception):
    """The control plane refused the worker's credentials (UNAUTHENTICATED or
    PERMISSION_DENIED): reconnecting cannot help, the operator must act."""


REJECTED_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True)
class WorkerCredentials:
    worker_id: str
    token: str
    token_id: str
    owner: str
    control_plane: str = ""

    def __repr__(self) -> str:  # never print the token
        return f"WorkerCredentials(worker_id={self.worker_id!r}, token_id={self.token_id!r}, owner={self.owner!r})"


def default_token_file(workdir: Path) -> Path:
    return Path(workdir) / ".tether" / "token.json"


def load_credentials(path: Path) -> WorkerCredentials | None:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the worker token file {str(path)!r}: {exc}") from None
    try:
        return WorkerCredentials(
            worker_id=data["worker_id"],
            token=data["token"],
            token_id=data["token_id"],
            owner=data["owner"],
            control_plane=data.get("control_plane", ""),
        )
    except (KeyError, TypeError):
        raise ValueError(f"the worker token file {str(path)!r} is not one `tether worker pair` wrote") from None


def save_credentials(path: Path, credentials: WorkerCredentials) -> None:
    """Write atomically, readable and writable by the owner only, from the first byte on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(credentials), f)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    tmp.replace(path)


async def pair(
    control_plane: str,
    code: str,
    name: str,
    *,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    timeout_s: float = 10.0,
) -> WorkerCredentials:
    """Exchange a one-time pairing code for a worker token. Raises grpc.aio.AioRpcError."""
    channel = make_channel(
        control_plane, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file
    )
    async with channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        response = await stub.Pair(worker_service_pb2.PairRequest(code=code, name=name), timeout=timeout_s)
    return WorkerCredentials(
        worker_id=response.worker_id,
        token=response.token,
        token_id=response.token_id,
        owner=response.owner,
        control_plane=control_plane,
    )
