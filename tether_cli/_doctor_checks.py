"""The control plane's side of `tether doctor`, one function per check; `doctor.py` runs them.

What each asks, exactly:

- `reachable`: a TCP connection to the address opens (a Unix socket for ``unix:`` targets).
- `tls` (when a CA is given): a TLS handshake with Python's `ssl`, verifying the server's
  certificate against the CA and the address's host name, offering the client certificate
  when one is given, and agreeing on HTTP/2 (ALPN ``h2``) as gRPC needs; then a short read
  shows whether the server kept a connection that presented (or lacked) a client certificate.
- `health`: `grpc.health.v1.Health/Check` for the whole server ("") answers SERVING.
- `version`: the control plane reports no release number, so what is compared is its
  contract: through server reflection it describes every ``tether.v1`` file it serves, and
  each RPC (with its request and response types and streaming), message field (number, type,
  label) and enum value must be the same as this installation's generated code.
- `clock_skew`: `AdminService.CreatePairingCode` with a 1 s life; the control plane's clock
  when it made the code is ``expire_time - 1 s``, compared with the middle of the call on this
  host's clock (the half round trip is the error bar). The code expires unused a second later.
  It needs credentials that may create pairing codes (an API key, or a --dev control plane).
- `database` (given --db): the database's schema revision is this release's head, read as
  `tether db check` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import os
import pkgutil
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import grpc
from google.protobuf import descriptor_pb2
from grpc.aio import StreamStreamMultiCallable, UnaryUnaryMultiCallable
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tether import sdk
from tether.execution_worker.doctor import Check
from tether.sdk.channel import make_channel, tls_hint

if TYPE_CHECKING:  # grpcio-reflection may be missing; `version_check` says so
    from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest, ServerReflectionResponse

#: A skew beyond this many seconds fails (`--max-clock-skew-s`).
MAX_CLOCK_SKEW_S = 1.0
#: The life of the pairing code whose expiry time tells the control plane's clock.
_PROBE_TTL_S = 1.0
#: How long the TLS check waits to see whether the server drops the connection after the
#: handshake (TLS 1.3 refuses a client certificate only then).
_TLS_SETTLE_S = 0.5
_START_FIX = "start the control plane (tether serve), or pass its HOST:PORT with --control-plane / TETHER_CONTROL_PLANE"
_CONTRACT_PACKAGE = "tether.v1"


class _HealthStub(Protocol):
    # The generated stubs are untyped; these say what the calls made here are.
    Check: UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


class _ReflectionStub(Protocol):
    ServerReflectionInfo: StreamStreamMultiCallable[ServerReflectionRequest, ServerReflectionResponse]


@dataclass(frozen=True)
class Dial:
    """How to reach the control plane: the address, TLS files and the caller's credentials."""

    target: str
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    api_key: str | None = None
    owner: str | None = None
    timeout_s: float = 5.0

    def channel(self) -> grpc.aio.Channel:
        """Raises ValueError for an unreadable TLS file."""
        return make_channel(
            self.target, tls_ca_file=self.tls_ca_file, tls_cert_file=self.tls_cert_file, tls_key_file=self.tls_key_file
        )

    def hint(self, error: grpc.aio.AioRpcError) -> str:
        return tls_hint(error.details() or "", tls=bool(self.tls_ca_file), client_cert=bool(self.tls_cert_file))


def tether_version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- reachable ---------------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, int] | str:
    """(host, port) of a gRPC target, or the socket path of a ``unix:`` one."""
    if target.startswith("unix:"):
        return target.removeprefix("unix://") if target.startswith("unix://") else target.removeprefix("unix:")
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    host, sep, port = target.rpartition(":")
    if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
        host, port = target, "443"  # gRPC's default port
    return host.strip("[]"), int(port) if port.isdigit() else 443


async def reachable_check(dial: Dial) -> Check:
    where = split_target(dial.target)
    try:
        async with asyncio.timeout(dial.timeout_s):
            if isinstance(where, str):
                _, writer = await asyncio.open_unix_connection(where)
            else:
                _, writer = await asyncio.open_connection(*where)
    except TimeoutError:
        return Check.failed("reachable", f"no answer from {dial.target} within {dial.timeout_s:g}s", _START_FIX)
    except socket.gaierror as error:
        return Check.failed(
            "reachable",
            f"cannot resolve the host of {dial.target}: {error.strerror}",
            "check the host name in --control-plane / TETHER_CONTROL_PLANE",
        )
    except OSError as error:
        said = os.strerror(error.errno) if error.errno and error.errno > 0 else str(error)
        return Check.failed("reachable", f"cannot connect to {dial.target}: {said}", _START_FIX)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check.passed("reachable", f"{dial.target} accepts connections")


# -- TLS ---------------------------------------------------------------------------------------


async def tls_check(dial: Dial) -> Check:
    if bool(dial.tls_cert_file) != bool(dial.tls_key_file):
        return Check.failed(
            "tls",
            "a client certificate and its key go together; one of them is missing",
            "give both --tls-cert and --tls-key",
        )
    if not dial.tls_ca_file:
        if dial.tls_cert_file:
            return Check.failed(
                "tls",
                "a client certificate is given, but no CA: the connection would be plaintext",
                "give --tls-ca too",
            )
        return Check.skipped("tls", "plaintext: no CA given (--tls-ca / TETHER_TLS_CA), so nothing to verify")
    where = split_target(dial.target)
    if isinstance(where, str):
        return Check.skipped("tls", "a Unix socket: its TLS is checked by the health call")
    host, port = where
    try:
        context = ssl.create_default_context(cafile=dial.tls_ca_file)
        if dial.tls_cert_file:
            context.load_cert_chain(dial.tls_cert_file, dial.tls_key_file)
    except (OSError, ssl.SSLError, ValueError) as error:
        return Check.failed(
            "tls",
            f"cannot load the TLS files: {error}",
            "point --tls-ca, --tls-cert and --tls-key at readable PEM files",
        )
    context.set_alpn_protocols(["h2"])
    try:
        async with asyncio.timeout(dial.timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except ssl.SSLCertVerificationError as error:
        return _unverified(dial, host, error)
    except (ssl.SSLError, OSError, TimeoutError) as error:
        return _handshake_failed(dial, error)
    try:
        peer = writer.get_extra_info("peercert") or {}
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        refused = await _refused_after_handshake(reader)
    finally:
        writer.transport.abort()  # a graceful TLS close waits on the server's close_notify
    if refused is not None:
        return _handshake_failed(dial, refused)
    if alpn != "h2":
        return Check.failed(
            "tls",
            f"{dial.target} completed TLS but did not agree to HTTP/2 (ALPN h2, got {alpn!r}), which gRPC needs",
            "dial the control plane itself, or make the proxy in front of it pass HTTP/2 (h2) through",
        )
    subject = ", ".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
    mutual = " with this client certificate" if dial.tls_cert_file else ""
    return Check.passed(
        "tls",
        f"the certificate of {host} ({subject or 'no subject'}, valid until {peer.get('notAfter', '?')}) "
        f"verifies against {dial.tls_ca_file}{mutual}",
    )


async def _refused_after_handshake(reader: asyncio.StreamReader) -> Exception | None:
    """In TLS 1.3 a server refuses a client certificate after the client's handshake is done:
    the refusal (or a closed connection) arrives on the first read. gRPC's server sends its
    HTTP/2 settings first, so data (or nothing within the wait) means it kept the connection."""
    try:
        async with asyncio.timeout(_TLS_SETTLE_S):
            data = await reader.read(1)
    except TimeoutError:
        return None
    except (ssl.SSLError, OSError) as error:
        return error
    return None if data else ConnectionResetError("the server closed the connection after the TLS handshake")


def _unverified(dial: Dial, host: str, error: ssl.SSLCertVerificationError) -> Check:
    said = error.verify_message or str(error)
    if "hostname" in said.lower() or "ip address mismatch" in said.lower():
        fix = f"dial a name the certificate holds, or issue the control plane a certificate for {host}"
    elif "expired" in said.lower():
        fix = "renew the control plane's certificate (tether serve --tls-cert) and restart it"
    else:
        fix = "set --tls-ca / TETHER_TLS_CA to the CA that signed the control plane's certificate"
    return Check.failed(
        "tls", f"the control plane's certificate does not verify against {dial.tls_ca_file}: {said}", fix
    )


def _handshake_failed(dial: Dial, error: BaseException) -> Check:
    if isinstance(error, TimeoutError):
        return Check.failed(
            "tls",
            f"the TLS handshake with {dial.target} did not finish within {dial.timeout_s:g}s",
            "check that --control-plane names the control plane's own port",
        )
    # The SDK's hints for the two ways gRPC reports these failures say what to set.
    seen = "WRONG_VERSION_NUMBER" if "WRONG_VERSION_NUMBER" in str(error) else "failed to connect: Socket closed"
    fix = tls_hint(seen, tls=True, client_cert=bool(dial.tls_cert_file))
    return Check.failed("tls", f"the TLS handshake with {dial.target} failed: {type(error).__name__}: {error}", fix)


# -- health ------------------------------------------------------------------------------------


async def health_check(dial: Dial) -> Check:
    async with dial.channel() as channel:
        stub = cast(_HealthStub, health_pb2_grpc.HealthStub(channel))
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=dial.timeout_s)
        except grpc.aio.AioRpcError as error:
            return Check.failed(
                "health",
                f"the health call failed: {error.code().name}: {error.details()}",
                dial.hint(error) or "see the control plane's log; `tether serve` serves the health service",
            )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return Check.failed(
            "health",
            f"the control plane reports {status}",
            "it is starting, stopping or lost its database: see its log, and restart `tether serve` if it stays so",
        )
    return Check.passed("health", "SERVING")


# -- version -----------------------------------------------------------------------------------


async def version_check(dial: Dial) -> Check:
    here = tether_version()
    try:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    except ModuleNotFoundError:
        return Check.failed(
            "version",
            "comparing contracts needs grpcio-reflection, which is not installed",
            "pip install 'tether[cli]'",
        )
    local = _local_files()
    async with dial.channel() as channel:
        # The stub's types name the sync channel; on an aio channel its calls are the aio ones.
        stub = cast(_ReflectionStub, reflection_pb2_grpc.ServerReflectionStub(channel))  # type: ignore[arg-type]

        async def ask(requests: list[ServerReflectionRequest]) -> list[ServerReflectionResponse]:
            call = stub.ServerReflectionInfo(iter(requests), timeout=dial.timeout_s)
            return [response async for response in call]

        try:
            answers = await ask(
                [reflection_pb2.ServerReflectionRequest(list_services="")]
                + [reflection_pb2.ServerReflectionRequest(file_by_filename=name) for name in sorted(local)]
            )
            services = [s.name for a in answers for s in a.list_services_response.service]
            remote = _files(answers)
            unknown = [s for s in services if s.startswith(_CONTRACT_PACKAGE + ".") and not _declares(remote, s)]
            if unknown:
                remote.update(
                    _files(
                        await ask([reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in unknown])
                    )
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return Check.failed(
                    "version",
                    f"{dial.target} serves no server reflection, which every Tether control plane does",
                    "point --control-plane at a Tether control plane",
                )
            return Check.failed(
                "version", f"reflection failed: {error.code().name}: {error.details()}", dial.hint(error) or _START_FIX
            )
    ours, theirs = _contract(local), _contract(remote)
    if ours == theirs:
        rpcs = sum(1 for item in ours if item.startswith("rpc "))
        return Check.passed(
            "version",
            f"the control plane serves the {_CONTRACT_PACKAGE} contract of this tether {here} ({rpcs} RPCs, "
            f"{len(ours) - rpcs} fields and enum values alike); it reports no release number, so releases "
            "with the same contract are not told apart",
        )
    lacks, adds = sorted(ours - theirs), sorted(theirs - ours)
    said = []
    if lacks:
        said.append(f"it lacks {_some(lacks)}")
    if adds:
        said.append(f"it has {_some(adds)} that this tether lacks")
    if lacks and not adds:
        fix = f"upgrade the control plane to tether {here} (or run tether doctor from the control plane's release)"
    elif adds and not lacks:
        fix = "upgrade tether here to the control plane's release (pip install -U tether)"
    else:
        fix = "install the same tether release on the control plane and here"
    return Check.failed(
        "version",
        f"the control plane's {_CONTRACT_PACKAGE} contract differs from this tether {here}'s: {'; '.join(said)}",
        fix,
    )


def _local_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """This installation's generated `tether.v1` files, by proto file name."""
    import tether.v1

    files = {}
    for module in pkgutil.iter_modules(tether.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"tether.v1.{module.name}").DESCRIPTOR
            proto = descriptor_pb2.FileDescriptorProto()
            descriptor.CopyToProto(proto)
            files[proto.name] = proto
    return files


def _files(answers: list[ServerReflectionResponse]) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = {}
    for answer in answers:
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if proto.package == _CONTRACT_PACKAGE:
                files[proto.name] = proto
    return files


def _declares(files: dict[str, descriptor_pb2.FileDescriptorProto], service: str) -> bool:
    return any(f"{f.package}.{s.name}" == service for f in files.values() for s in f.service)


def _contract(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> set[str]:
    """Every RPC, message field and enum value, each as one comparable line."""
    items: set[str] = set()
    field_type = descriptor_pb2.FieldDescriptorProto.Type.Name
    label = descriptor_pb2.FieldDescriptorProto.Label.Name

    def enum(e: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        for value in e.value:
            items.add(f"enum value {scope}.{e.name}.{value.name} = {value.number}")

    def message(m: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{m.name}"
        for f in m.field:
            kind = f.type_name.lstrip(".") or field_type(f.type)
            items.add(f"field {name}.{f.name} = {f.number} ({label(f.label)} {kind})")
        for nested in m.nested_type:
            message(nested, name)
        for e in m.enum_type:
            enum(e, name)

    for file in files.values():
        for service in file.service:
            for rpc in service.method:
                request = ("stream " if rpc.client_streaming else "") + rpc.input_type.lstrip(".")
                response = ("stream " if rpc.server_streaming else "") + rpc.output_type.lstrip(".")
                items.add(f"rpc {file.package}.{service.name}.{rpc.name}({request}) returns ({response})")
        for m in file.message_type:
            message(m, file.package)
        for e in file.enum_type:
            enum(e, file.package)
    return items


def _some(items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


# -- clock skew --------------------------------------------------------------------------------


async def clock_check(
    dial: Dial, *, max_skew_s: float = MAX_CLOCK_SKEW_S, clock: Callable[[], float] = time.time
) -> Check:
    """`clock` is this host's wall clock (a parameter so that a test can skew it)."""
    async with sdk.AsyncClient(
        dial.target,
        timeout_s=dial.timeout_s,
        api_key=dial.api_key,
        owner=dial.owner,
        tls_ca_file=dial.tls_ca_file,
        tls_cert_file=dial.tls_cert_file,
        tls_key_file=dial.tls_key_file,
    ) as client:
        sent = clock()
        try:
            code = await client.create_pairing_code(_PROBE_TTL_S)
        except (sdk.UnauthenticatedError, sdk.PermissionDeniedError, sdk.InvalidArgumentError) as error:
            return Check.skipped(
                "clock_skew",
                "not measured: reading the control plane's clock takes credentials that may create a pairing "
                f"code (TETHER_API_KEY, with TETHER_OWNER for a backend or admin key): {error}",
            )
        except sdk.TetherError as error:
            return Check.failed("clock_skew", f"could not read the control plane's clock: {error}", _START_FIX)
        received = clock()
    if code.expire_time is None:
        return Check.failed("clock_skew", "the pairing code came back without an expiry time", _START_FIX)
    skew = code.expire_time.timestamp() - _PROBE_TTL_S - (sent + received) / 2
    error_bar = (received - sent) / 2
    said = (
        f"the control plane's clock is {abs(skew):.3f}s {'ahead of' if skew > 0 else 'behind'} this host's "
        f"(±{error_bar:.3f}s, from AdminService.CreatePairingCode's expire_time)"
    )
    if abs(skew) - error_bar > max_skew_s:
        return Check.failed(
            "clock_skew",
            f"{said}, more than {max_skew_s:g}s",
            "synchronise both hosts' clocks with NTP (chrony or systemd-timesyncd): drain deadlines and lease "
            "expiry times travel as absolute times",
        )
    return Check.passed("clock_skew", f"{said}, within {max_skew_s:g}s")


# -- database ----------------------------------------------------------------------------------


async def database_check(db: str | None) -> Check:
    if not db:
        return Check.skipped(
            "database",
            "not checked: give --db (or TETHER_DB) to read its revision; a control plane that serves checked its "
            "database against its own release when it started",
        )
    try:
        from tether.control_plane.store import (
            SCHEMA_HEAD,
            DatabaseNotReady,
            check_schema,
            create_engine,
            database_url,
            describe_database,
            is_sqlite,
        )
    except ModuleNotFoundError as error:
        return Check.failed(
            "database",
            f"reading a database needs the server extra ({error.name} is missing)",
            "pip install 'tether[server]'",
        )
    try:
        url = database_url(db)
    except ValueError as error:
        return Check.failed("database", str(error), "pass --db the path or URL `tether serve` uses")
    name = describe_database(url)
    if is_sqlite(url) and _no_file(name):
        # Opening it would make an empty file: say so instead.
        return Check.failed(
            "database", f"there is no SQLite file {name}", "pass --db the path or URL `tether serve` uses"
        )
    engine = create_engine(url)
    try:
        await check_schema(engine)
    except DatabaseNotReady as error:
        problem, _, fix = str(error).rpartition(": run ")
        if problem:
            return Check.failed("database", problem, f"run {fix}")
        return Check.failed("database", str(error), "pass --db the path or URL `tether serve` uses, and check it is up")
    finally:
        await engine.dispose()
    return Check.passed("database", f"the database {name} is at revision {SCHEMA_HEAD}, this release's head")


def _no_file(sqlite_path: str) -> bool:
    return sqlite_path != ":memory:" and not Path(sqlite_path).is_file()
