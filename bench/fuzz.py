"""fuzz_requests / fuzz_internal_errors: arbitrary and malformed messages to every RPC.

Every method of SessionService, WorkerService and AdminService, as the descriptors list them,
gets requests built by hypothesis from its request message's descriptor (strings of every
shape, ids of real and made-up resources, integers at their extremes, unknown enum numbers,
nested messages, maps, repeated fields) and raw bytes that are no valid encoding of it (random,
truncated, spliced, invalid UTF-8, lengths past the end). Streaming methods get a few messages
(under the 4 MiB limit, see _STREAM_SIZES) and a half-close; server streams are read for a
bounded number of responses under a short deadline. Each call carries one of: the API key of owner "attacker", the worker token of that
owner's paired worker, no credentials, or garbage.

Owner "victim" owns sessions, turns, events, a worker, a worker token and pairing codes, all
stored before the run. A run passes when no answer is INTERNAL or UNKNOWN (or a hang, or
another status without a tether ErrorInfo), no error is logged, the server still serves, and
the victim's rows (and every credential row from before the run) are byte-for-byte the same.

The control plane runs on its own event loop in a thread, so hypothesis drives it through a
plain blocking gRPC channel. tests/test_fuzz.py runs the same engine with fewer examples.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import pathlib
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.v1 import admin_service_pb2 as apb
from tether.v1 import admin_service_pb2_grpc as agrpc
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

from ._harness import emit

T = TypeVar("T")

VICTIM = "victim"
ATTACKER = "attacker"
BENCH_EXAMPLES_PER_METHOD = 100
UNARY_TIMEOUT_S = 10.0  # a unary call this slow is a hang, reported as such
STREAM_TIMEOUT_S = 0.5  # server streams are cut here (a live StreamSessionEvents never ends)
MAX_STREAM_RESPONSES = 20
# Methods that may end the attacker's own fixtures; run last so the others still reach them.
_DESTRUCTIVE = {"DeleteSession", "ArchiveSession", "DrainWorker", "RevokeWorkerToken"}
_DETAILS_KEY = "grpc-status-details-bin"


# -- the methods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    path: str
    name: str
    input: d.Descriptor
    client_streaming: bool
    server_streaming: bool


def all_methods() -> list[Method]:
    """Every RPC of the three services, from the descriptors; destructive ones last."""
    found = []
    for module, service in (
        (spb, "SessionService"),
        (wpb, "WorkerService"),
        (apb, "AdminService"),
    ):
        desc = module.DESCRIPTOR.services_by_name[service]
        for m in desc.methods:
            found.append(
                Method(f"/{desc.full_name}/{m.name}", m.name, m.input_type, m.client_streaming, m.server_streaming)
            )
    return sorted(found, key=lambda m: m.name in _DESTRUCTIVE)


# -- requests ---------------------------------------------------------------------------------

_INT_BOUNDS = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\n",
    "\t\r\n",
    "\x7f",
    "\u202e",
    "\ufeff",
    "\u0000abc",
    "..",
    "../../etc/passwd",
    "' OR 1=1 --",
    "%s%n%x",
    "{}",
    "[]",
    "null",
    '{"a": 1}',
    '{"decision": "accept"}',
    "{" * 200,
    "ses_",
    "trn_",
    "wrk_",
    "twt_",
    "tak_",
    "req_",
    "snp_",
    "key_",
    "tok_",
    "shell",
    "script",
]
_SIZES = [63, 64, 65, 127, 128, 129, 256, 257, 1024, 4097, 65537, (1 << 20) + 1, 3 << 20]
# A client stream keeps under the server's 4 MiB message limit: past it gRPC ends the stream on
# the server as if the client had half-closed (a known gap, not one to find again each run).
_STREAM_SIZES = [n for n in _SIZES if n <= 65537]
_MAX_DEPTH = 6


def _ints(kind: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_BOUNDS[kind]
    special = (lo, lo + 1, -1, 0, 1, 2, 3, 1000, 2**31 - 1, 2**31, 2**53 + 1, hi - 1, hi)
    edges = sorted({v for v in special if lo <= v <= hi})
    return st.one_of(st.integers(max(lo, -1), min(hi, 5)), st.sampled_from(edges), st.integers(lo, hi))


class Requests:
    """Hypothesis strategies for any request message, from its descriptor alone."""

    def __init__(self, ids: dict[str, list[str]], sizes: list[int] = _SIZES) -> None:
        """`ids`: real and look-alike ids by the field name they fit ("session_id", ...);
        `sizes`: the lengths of the long strings."""
        self._strings = st.one_of(
            st.sampled_from([i for some in ids.values() for i in some]),
            st.sampled_from(_ODD_STRINGS),
            st.text(max_size=40),
            st.builds(operator.mul, st.sampled_from(["a", "é", "\x00", "🙂", " ", "-"]), st.sampled_from(sizes)),
        )
        # A field named like an id mostly gets an id of its kind, so calls get past validation.
        self._ids = {
            kind: st.one_of(st.sampled_from(some), st.sampled_from(some), self._strings)
            for kind, some in ids.items()
            if some
        }
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def message(self, desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (desc.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(desc, depth)
        return self._cache[key]

    def body(self, desc: d.Descriptor) -> st.SearchStrategy[bytes]:
        """Valid encodings of `desc`, twice as often as bytes that are not one."""
        valid = self.message(desc).map(lambda m: m.SerializeToString())
        return st.one_of(valid, valid, _corrupt(desc, valid))

    def _build(self, desc: d.Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(desc)
        # A oneof of one field is a proto3 `optional`: a plain field here.
        groups = [o for o in desc.oneofs if len(o.fields) > 1]
        grouped = {f.name for o in groups for f in o.fields}
        plain = [(f, self._field(f, depth)) for f in desc.fields if f.name not in grouped]
        choices = [
            st.one_of(
                st.none(),
                st.sampled_from(list(o.fields)).flatmap(lambda f: st.tuples(st.just(f), self._field(f, depth))),
            )
            for o in groups
        ]

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            msg = cls()
            for f, strategy in plain:
                value = draw(st.one_of(strategy, strategy, st.none()))
                if value is not None:
                    _set(msg, f, value)
            for choice in choices:
                picked = draw(choice)
                if picked is not None:
                    _set(msg, *picked)
            return msg

        return build()

    def _field(self, f: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = self._single(f.message_type.fields_by_name["key"], depth)
            value = self._single(f.message_type.fields_by_name["value"], depth + 1)
            many = st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.integers(60, 70))
            return st.one_of(st.dictionaries(key, value, max_size=4), many)
        single = self._single(f, depth)
        if f.is_repeated:
            return st.lists(single, max_size=5)
        return single

    def _single(self, f: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        t = f.type
        if t == d.FieldDescriptor.TYPE_MESSAGE:
            if depth >= _MAX_DEPTH:
                return st.just(message_factory.GetMessageClass(f.message_type)())
            return self.message(f.message_type, depth + 1)
        if t == d.FieldDescriptor.TYPE_STRING:
            return next((ids for kind, ids in self._ids.items() if f.name.endswith(kind)), self._strings)
        if t == d.FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if t == d.FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if t == d.FieldDescriptor.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
        if t == d.FieldDescriptor.TYPE_FLOAT:
            return st.floats(width=32)
        if t == d.FieldDescriptor.TYPE_DOUBLE:
            return st.floats()
        return _ints(t)


def _set(msg: Message, f: d.FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.is_repeated:
        target.extend(value)
    elif isinstance(value, Message):
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _corrupt(desc: d.Descriptor, valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes the server cannot decode as `desc` (or barely can: unknown fields, wrong types)."""
    numbers = st.sampled_from([f.number for f in desc.fields] or [1])
    strings = [f.number for f in desc.fields if f.type == d.FieldDescriptor.TYPE_STRING]
    parts = [
        st.binary(max_size=256),
        st.tuples(valid, st.integers(0, 64)).map(lambda v: v[0][: max(0, len(v[0]) - 1 - v[1])]),  # truncated
        st.tuples(valid, st.integers(0, 64), st.binary(min_size=1, max_size=16)).map(
            lambda v: v[0][: v[1]] + v[2] + v[0][v[1] :]  # spliced
        ),
        # a length-delimited field whose length runs past the end
        st.tuples(numbers, st.integers(1, 2**32)).map(lambda v: _varint(v[0] << 3 | 2) + _varint(v[1]) + b"x"),
        # a field number with every wire type, including the deprecated groups and 6 and 7
        st.tuples(st.integers(0, 2**29), st.integers(0, 7), st.binary(max_size=16)).map(
            lambda v: _varint(v[0] << 3 | v[1]) + v[2]
        ),
    ]
    if strings:
        invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b"])
        parts.append(
            st.tuples(st.sampled_from(strings), invalid_utf8).map(
                lambda v: _varint(v[0] << 3 | 2) + _varint(len(v[1])) + v[1]
            )
        )
    return st.one_of(parts)


# -- credentials ------------------------------------------------------------------------------

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Call:
    credential: str  # which kind, for the report
    metadata: Metadata
    bodies: tuple[bytes, ...]


def _credentials(native: str, api_key: str, worker_token: str) -> st.SearchStrategy[tuple[str, Metadata]]:
    """Metadata of a call: mostly the credential the service takes (`native`), else another."""
    garbage = st.one_of(
        st.sampled_from(
            [
                "Bearer",
                "Bearer  ",
                "bearer x",
                "Basic dXNlcjpwYXNz",
                "Bearer tak_",
                "Bearer twt_",
                "Bearer tak_" + "A" * 43,
                "Bearer twt_" + "A" * 43,
                "Bearer " + "x" * 300,
                "Bearer " + api_key[:-1],
                "Bearer " + worker_token + "x",
                "Token " + api_key,
            ]
        ),
        st.text(_PRINTABLE, max_size=80).map(lambda s: "Bearer " + s),
        st.text(_PRINTABLE, max_size=80),
    )
    auth = {
        "api_key": st.just("Bearer " + api_key),
        "worker_token": st.just("Bearer " + worker_token),
        "none": st.none(),
        "garbage": garbage,
    }
    kinds = st.sampled_from([native, native, native, *(k for k in auth if k != native)])
    owner = st.one_of(st.none(), st.sampled_from([VICTIM, ATTACKER, "", " "]), st.text(_PRINTABLE, max_size=300))

    def metadata(kind: str) -> st.SearchStrategy[tuple[str, Metadata]]:
        def build(secret: str | None, named: str | None) -> tuple[str, Metadata]:
            md = [] if secret is None else [("authorization", secret)]
            if named is not None:
                md.append(("x-tether-owner", named))
            return kind, tuple(md)

        return st.builds(build, auth[kind], owner)

    return kinds.flatmap(metadata)


# -- the server -------------------------------------------------------------------------------


class LocalControlPlane:
    """A control plane on its own event loop in a thread, for a blocking caller."""

    def __init__(self, db: pathlib.Path) -> None:
        self.db = db
        self.port = 0
        self.cp: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fuzz-control-plane", daemon=True)

    def __enter__(self) -> LocalControlPlane:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the control plane did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from tether.control_plane import ControlPlane, Settings

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ControlPlane(Settings(port=0, db=str(self.db), shutdown_grace_s=1.0)) as cp:
            self.cp, self.port = cp, cp.port
            self._ready.set()
            await self._stop.wait()


# -- stored rows ------------------------------------------------------------------------------

_SESSION_TABLES = ("turns", "events", "leases", "snapshots", "requests")
_ACCESS_TABLES = ("api_keys", "worker_tokens", "pairing_codes")


def protected_rows(db: pathlib.Path, owner: str, created_until_us: int) -> dict[str, list[tuple]]:
    """Every row of `owner` (its sessions and all that hangs off them, its workers) and every
    credential row created until `created_until_us`, read straight from the SQLite file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = {
            "sessions": conn.execute("SELECT * FROM sessions WHERE owner_id = ? ORDER BY rowid", (owner,)).fetchall()
        }
        ids = [r[0] for r in rows["sessions"]]
        marks = ",".join("?" * len(ids))
        for table in _SESSION_TABLES:
            query = f"SELECT * FROM {table} WHERE session_id IN ({marks}) ORDER BY rowid"
            rows[table] = conn.execute(query, ids).fetchall()
        rows["workers"] = conn.execute("SELECT * FROM workers WHERE owner_id = ? ORDER BY rowid", (owner,)).fetchall()
        for table in _ACCESS_TABLES:
            rows[table] = conn.execute(
                f"SELECT * FROM {table} WHERE create_time_us <= ? ORDER BY rowid", (created_until_us,)
            ).fetchall()
        return rows
    finally:
        conn.close()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Fixtures:
    api_key: str  # the attacker's
    worker_token: str  # the attacker's
    ids: dict[str, list[str]]  # real ids of both owners (not secrets) and look-alikes, by kind
    attacker_sessions: list[str]
    attacker_registration_id: str
    created_until_us: int


def _setup(server: LocalControlPlane, channel: grpc.Channel) -> Fixtures:
    session, worker, admin = (
        sgrpc.SessionServiceStub(channel),
        wgrpc.WorkerServiceStub(channel),
        agrpc.AdminServiceStub(channel),
    )
    ids: dict[str, list[str]] = {
        "session_id": ["ses_01AAAAAAAAAAAAAAAAAAAAAAAA"],
        "turn_id": ["trn_01AAAAAAAAAAAAAAAAAAAAAAAA"],
        "worker_id": ["wrk_01aaaaaaaaaaaaaaaaaaaaaaaa"],
        "token_id": ["twt_01AAAAAAAAAAAAAAAAAAAAAAAA"],
        "registration_id": ["reg_01AAAAAAAAAAAAAAAAAAAAAAAA"],
        "request_id": ["req_01AAAAAAAAAAAAAAAAAAAAAAAA"],
        "key_id": [],
    }

    def owner_data(owner: str, secret: str, sessions: int) -> tuple[list[str], str, str]:
        md = (("authorization", f"Bearer {secret}"),)
        made = []
        for i in range(sessions):
            s = session.CreateSession(
                spb.CreateSessionRequest(runtime="shell", labels={"owner": owner}), metadata=md, timeout=10
            ).session
            turn = session.SendInput(
                spb.SendInputRequest(session_id=s.session_id, input=f"echo {owner} {i}"), metadata=md, timeout=10
            ).turn
            if i == 0:  # one session idle with an ended turn, the others with a queued one
                session.InterruptTurn(spb.InterruptTurnRequest(session_id=s.session_id), metadata=md, timeout=10)
            made.append(s.session_id)
            ids["session_id"].append(s.session_id)
            ids["turn_id"].append(turn.turn_id)
        admin.CreatePairingCode(apb.CreatePairingCodeRequest(), metadata=md, timeout=10)  # left unused
        code = admin.CreatePairingCode(apb.CreatePairingCodeRequest(), metadata=md, timeout=10).code
        paired = worker.Pair(wpb.PairRequest(code=code, name=f"{owner}-worker"), timeout=10)
        wmd = (("authorization", f"Bearer {paired.token}"),)
        registered = worker.Register(
            wpb.RegisterRequest(runtimes=["shell"], slots=1, name=f"{owner}-worker"), metadata=wmd, timeout=10
        )
        ids["worker_id"].append(paired.worker_id)
        ids["key_id"].append(key_ids[owner])
        if owner == VICTIM:  # the attacker's own token id would let the run revoke its own token
            ids["token_id"].append(paired.token_id)
        else:
            ids["registration_id"].append(registered.registration_id)
        return made, paired.token, registered.registration_id

    attacker_key = server.run(server.cp.create_api_key("owner", ATTACKER, "fuzz"))
    victim_key = server.run(server.cp.create_api_key("owner", VICTIM, "fuzz"))
    key_ids = {
        owner: server.run(server.cp.access.find_api_key(secret)).key_id
        for owner, secret in ((ATTACKER, attacker_key), (VICTIM, victim_key))
    }
    owner_data(VICTIM, victim_key, 2)
    attacker_sessions, attacker_token, registration_id = owner_data(ATTACKER, attacker_key, 3)
    return Fixtures(attacker_key, attacker_token, ids, attacker_sessions, registration_id, int(time.time() * 1e6))


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    rich: bool = False  # a google.rpc.Status with tether's ErrorInfo came with it
    cut: bool = False  # a server stream this side ended (deadline or enough responses)


def problem(method: Method, outcome: Outcome) -> str | None:
    """What is wrong with an answer, or None. Refusals are expected; these are not."""
    code = outcome.code
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{code.name}: {outcome.details}"
    if outcome.cut or code == grpc.StatusCode.OK:
        return None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {UNARY_TIMEOUT_S}s"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in outcome.details:
        return None  # gRPC's own message-size limit, before any handler
    if not outcome.rich:
        return f"{code.name} without a tether ErrorInfo: {outcome.details}"
    return None


@dataclass
class Report:
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    credentials: Counter[str] = field(default_factory=Counter)
    by_method: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    internal_errors: int = 0
    findings: list[str] = field(default_factory=list)
    logged_errors: list[str] = field(default_factory=list)
    still_serving: bool = False
    rows_unchanged: bool = False
    protected_row_count: int = 0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.findings and not self.logged_errors and self.still_serving and self.rows_unchanged


class _ErrorLog(logging.Handler):
    """ERROR records from the server side during the run (a traceback is a finding too)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("tether.control_plane", "asyncio", "grpc")):
            trace = f"\n{logging.Formatter().formatException(record.exc_info)}" if record.exc_info else ""
            self.records.append(f"{record.name}: {record.getMessage()}{trace}")


class Fuzzer:
    def __init__(self, channel: grpc.Channel, fixtures: Fixtures, report: Report) -> None:
        self._channel = channel
        self._fixtures = fixtures
        self._requests = Requests(fixtures.ids)
        self._stream_requests = Requests(fixtures.ids, _STREAM_SIZES)
        self.report = report

    def calls(self, method: Method) -> st.SearchStrategy[Call]:
        if method.client_streaming:
            body = self._stream_requests.body(method.input)
            bodies = st.builds(operator.add, self._opener(method), st.lists(body, max_size=4).map(tuple))
        else:
            bodies = st.tuples(self._requests.body(method.input))
        native = "none" if method.name == "Pair" else "worker_token" if "WorkerService" in method.path else "api_key"
        credentials = _credentials(native, self._fixtures.api_key, self._fixtures.worker_token)
        return st.builds(lambda c, b: Call(c[0], c[1], tuple(b)), credentials, bodies)

    def _opener(self, method: Method) -> st.SearchStrategy[tuple[bytes, ...]]:
        """Sometimes a first message the attacker's own worker could send, so the stream gets
        past its header checks and the random messages after it reach deeper."""
        f = self._fixtures
        sessions, epochs = st.sampled_from(f.attacker_sessions), st.integers(1, 3)
        if method.name == "Lease":
            first = st.just(wpb.LeaseRequest(open=wpb.LeaseOpen(registration_id=f.attacker_registration_id)))
        elif method.name == "StreamEvents":
            first = st.builds(lambda s, e: wpb.StreamEventsRequest(session_id=s, lease_epoch=e), sessions, epochs)
        elif method.name == "Snapshot":
            first = st.builds(lambda s, e: wpb.SnapshotRequest(session_id=s, lease_epoch=e), sessions, epochs)
        else:
            return st.just(())
        return st.one_of(st.just(()), first.map(lambda m: (m.SerializeToString(),)))

    def fuzz(self, method: Method, examples: int, *, strict: bool, derandomize: bool) -> None:
        """`examples` calls of `method`. Strict: the first problem fails (shrunk by hypothesis)."""

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(call=self.calls(method))
        def one(call: Call) -> None:
            outcome = self.send(method, call)
            wrong = problem(method, outcome)
            if wrong is not None:
                self.report.findings.append(f"{method.path} ({call.credential}): {wrong}")
            assert not strict or wrong is None, f"{method.path} with {call.credential}: {wrong}"

        one()

    def send(self, method: Method, call: Call) -> Outcome:
        self.report.requests += 1
        self.report.credentials[call.credential] += 1
        outcome = self._invoke(method, call)
        self.report.codes[outcome.code.name] += 1
        self.report.by_method[method.name][outcome.code.name] += 1
        if outcome.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            self.report.internal_errors += 1
        return outcome

    def _invoke(self, method: Method, call: Call) -> Outcome:
        kind = {
            (False, False): self._channel.unary_unary,
            (False, True): self._channel.unary_stream,
            (True, False): self._channel.stream_unary,
            (True, True): self._channel.stream_stream,
        }[(method.client_streaming, method.server_streaming)]
        stub = kind(method.path, request_serializer=_raw, response_deserializer=_raw)
        request = iter(call.bodies) if method.client_streaming else call.bodies[0]
        timeout = STREAM_TIMEOUT_S if method.server_streaming else UNARY_TIMEOUT_S
        try:
            answer = stub(request, metadata=call.metadata, timeout=timeout)
            if method.server_streaming:
                for n, _ in enumerate(answer, 1):
                    if n >= MAX_STREAM_RESPONSES:
                        answer.cancel()
                        return Outcome(grpc.StatusCode.OK, cut=True)
            return Outcome(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            code = err.code()
            rich = any(k == _DETAILS_KEY for k, _ in err.trailing_metadata() or ())
            cut = method.server_streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED
            return Outcome(code, err.details() or "", rich, cut)


def _raw(b: bytes) -> bytes:
    return b


def _still_serving(channel: grpc.Channel, api_key: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        made = sgrpc.SessionServiceStub(channel).CreateSession(
            spb.CreateSessionRequest(runtime="shell"), metadata=(("authorization", f"Bearer {api_key}"),), timeout=10
        )
    except grpc.RpcError:
        return False
    return health.status == health_pb2.HealthCheckResponse.SERVING and made.session.session_id.startswith("ses_")


def run_fuzz(
    root: pathlib.Path,
    examples_per_method: int,
    *,
    strict: bool = False,
    derandomize: bool = False,
    methods: list[Method] | None = None,
) -> Report:
    """One fresh control plane on `root/fuzz.db`, fuzzed method by method. Strict: raise at
    the first problem (a test); otherwise count everything and report (a benchmark)."""
    report = Report()
    db = root / "fuzz.db"
    errors = _ErrorLog()
    started = time.monotonic()
    with LocalControlPlane(db) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        fixtures = _setup(server, channel)
        before = protected_rows(db, VICTIM, fixtures.created_until_us)
        report.protected_row_count = sum(len(rows) for rows in before.values())
        logging.getLogger().addHandler(errors)
        try:
            fuzzer = Fuzzer(channel, fixtures, report)
            for method in methods or all_methods():
                fuzzer.fuzz(method, examples_per_method, strict=strict, derandomize=derandomize)
        finally:
            logging.getLogger().removeHandler(errors)
            report.logged_errors = errors.records
            report.seconds = time.monotonic() - started
        report.still_serving = server.alive and _still_serving(channel, fixtures.api_key)
        report.rows_unchanged = protected_rows(db, VICTIM, fixtures.created_until_us) == before
    return report


async def main() -> bool:
    with tempfile.TemporaryDirectory(prefix="tether-fuzz-") as tmp:
        report = await asyncio.to_thread(run_fuzz, pathlib.Path(tmp), BENCH_EXAMPLES_PER_METHOD, derandomize=True)
    emit("fuzz_requests", report.requests, "requests", methods=len(all_methods()), seconds=round(report.seconds, 1))
    emit("fuzz_internal_errors", report.internal_errors, "responses")
    for line in [*report.findings[:20], *report.logged_errors[:20]]:
        print(f"fuzz: {line}", file=sys.stderr)
    if not report.still_serving:
        print("fuzz: the control plane stopped serving", file=sys.stderr)
    if not report.rows_unchanged:
        print("fuzz: the victim's stored rows changed", file=sys.stderr)
    return report.passed and report.internal_errors == 0
