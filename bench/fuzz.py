"""fuzz_requests / fuzz_internal_errors: arbitrary and malformed messages to every RPC.

Every method of SessionService, WorkerService and AdminService, as the descriptors list them,
gets requests built by hypothesis from its request message's descriptor (strings of every
shape, ids of real and made-up resources, integers at their extremes, unknown enum numbers,
nested messages, maps, repeated fields) and raw bytes that are no valid encoding of it (random,
truncated, spliced, invalid UTF-8, lengths past the end). Streaming methods get a few messages
(under the 4 MiB limit, see _STREAM_SIZES) and a half-close; server streams are read for a
bounded number of responses under a short deadline. Each call carries one of: the API key of
owner "attacker", the worker token of that owner's paired worker, no credentials, or garbage.

Then come mid-stream sequences (bench/_fuzz_streams.py): two more paired workers of the attacker
act as real workers and misbehave only once their streams are open and past their checks:
malformed messages on an open Lease stream, malformed batches on StreamEvents after events the
control plane acknowledged for a turn it granted, malformed chunks of a Snapshot upload after a
valid header. `make bench` sends over 10,000 requests in all.

Owner "victim" owns sessions, turns, events, a worker, a worker token and pairing codes, all
stored before the run. A run passes when no answer is INTERNAL or UNKNOWN (or a hang, or
another status without a tether ErrorInfo), no error is logged, the server still serves, and
the victim's rows (and every credential row from before the run but the attacker's own, which
it may revoke or purge) are byte-for-byte the same.

The control plane runs on its own event loop in a thread, so hypothesis drives it through a
plain blocking gRPC channel. tests/integration/test_fuzz.py runs the same engine with fewer
examples.
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.v1 import admin_service_pb2 as apb
from tether.v1 import admin_service_pb2_grpc as agrpc
from tether.v1 import session_service_pb2 as spb
from tether.v1 import session_service_pb2_grpc as sgrpc
from tether.v1 import worker_service_pb2 as wpb
from tether.v1 import worker_service_pb2_grpc as wgrpc

from ._fuzz_requests import (
    _STREAM_SIZES,
    ATTACKER,
    UNARY_TIMEOUT_S,
    VICTIM,
    Call,
    Method,
    Outcome,
    Requests,
    _credentials,
    all_methods,
    outcome_of,
    problem,
)
from ._fuzz_streams import EventsPlan, LeasePlan, StreamFuzzer
from ._harness import emit

T = TypeVar("T")

BENCH_EXAMPLES_PER_METHOD = 300  # 27 methods: 8,100 requests
BENCH_MID_STREAM_EXAMPLES = 300  # of each kind: 300 lease and 300 events sequences, about 2,800 requests
STREAM_TIMEOUT_S = 0.5  # server streams are cut here (a live StreamSessionEvents never ends)
MAX_STREAM_RESPONSES = 20
# Methods that may delete the attacker's own fixtures; fuzzed after everything else.
_SELF_DESTRUCTIVE = frozenset({"PurgeOwnerData"})

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
        from tether.control_plane import ControlPlane, Settings, Timings

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # Queued turns say why they wait at once, not 2 s later in the middle of the run, so
        # the victim's stored rows are settled before they are read.
        timings = Timings(waiting_notice_s=0.0)
        async with ControlPlane(Settings(port=0, db=str(self.db), shutdown_grace_s=1.0, timings=timings)) as cp:
            self.cp, self.port = cp, cp.port
            self._ready.set()
            await self._stop.wait()


# -- stored rows ------------------------------------------------------------------------------

_SESSION_TABLES = ("turns", "events", "leases", "snapshots", "requests")
_ACCESS_TABLES = ("api_keys", "worker_tokens", "pairing_codes")


def protected_rows(db: pathlib.Path, owner: str, created_until_us: int) -> dict[str, list[tuple]]:
    """Every row of `owner` (its sessions and all that hangs off them, its workers) and every
    credential row created until `created_until_us` but the attacker's (its own it may revoke,
    or purge with PurgeOwnerData), read straight from the SQLite file."""
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
                f"SELECT * FROM {table} WHERE create_time_us <= ? AND owner_id != ? ORDER BY rowid",
                (created_until_us, ATTACKER),
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


def setup_fixtures(server: LocalControlPlane, channel: grpc.Channel) -> Fixtures:
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
    mid_stream: Counter[str] = field(default_factory=Counter)  # how deep the sequences got

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


def _settings(examples: int, derandomize: bool) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


class Fuzzer:
    def __init__(self, channel: grpc.Channel, fixtures: Fixtures, report: Report) -> None:
        self._channel = channel
        self._fixtures = fixtures
        self._requests = Requests(fixtures.ids)
        self._stream_requests = Requests(fixtures.ids, _STREAM_SIZES)
        self.report = report
        self._strict = False
        # Paired now, while the owner may still issue pairing codes: the plain fuzz of
        # CreatePairingCode uses up its pending ones.
        self._streams = StreamFuzzer(channel, fixtures.api_key, self._stream_requests, self._record_step)

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
        elif method.name == "StreamWorkerEvents":
            first = st.builds(
                lambda s, e: wpb.StreamWorkerEventsRequest(
                    batches=[wpb.SessionEventBatch(session_id=s, lease_epoch=e)]
                ),
                sessions,
                epochs,
            )
        elif method.name == "Snapshot":
            first = st.builds(lambda s, e: wpb.SnapshotRequest(session_id=s, lease_epoch=e), sessions, epochs)
        else:
            return st.just(())
        return st.one_of(st.just(()), first.map(lambda m: (m.SerializeToString(),)))

    def fuzz(self, method: Method, examples: int, *, strict: bool, derandomize: bool) -> None:
        """`examples` calls of `method`. Strict: the first problem fails (shrunk by hypothesis)."""

        @_settings(examples, derandomize)
        @given(call=self.calls(method))
        def one(call: Call) -> None:
            wrong = self.record(method.name, call.credential, self._invoke(method, call))
            assert not strict or wrong is None, f"{method.path} with {call.credential}: {wrong}"

        one()

    def fuzz_mid_stream(self, examples: int, *, strict: bool, derandomize: bool) -> None:
        """`examples` lease sequences and as many events sequences (bench/_fuzz_streams.py):
        malformed messages on Lease and StreamEvents streams after valid ones, and on Snapshot
        uploads after a valid header. Strict: the first wrong answer fails."""
        streams, self._strict = self._streams, strict

        @_settings(examples, derandomize)
        @given(plan=streams.lease_plans())
        def lease(plan: LeasePlan) -> None:
            streams.lease_sequence(plan)

        @_settings(examples, derandomize)
        @given(plan=streams.events_plans())
        def events(plan: EventsPlan) -> None:
            streams.events_sequence(plan)

        try:
            lease()
            events()
        finally:
            self.report.mid_stream.update(streams.depth.counts)

    def _record_step(self, name: str, credential: str, outcome: Outcome) -> None:
        wrong = self.record(name, credential, outcome)
        assert not self._strict or wrong is None, f"{name} in a mid-stream sequence: {wrong}"

    def record(self, name: str, credential: str, outcome: Outcome) -> str | None:
        """Count one call's answer; return what is wrong with it, if anything (also a finding)."""
        report = self.report
        report.requests += 1
        report.credentials[credential] += 1
        report.codes[outcome.code.name] += 1
        report.by_method[name][outcome.code.name] += 1
        if outcome.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            report.internal_errors += 1
        wrong = problem(outcome)
        if wrong is not None:
            report.findings.append(f"{name} ({credential}): {wrong}")
        return wrong

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
            return outcome_of(err, cut_by_deadline=method.server_streaming)


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
    mid_stream_examples: int = 0,
) -> Report:
    """One fresh control plane on `root/fuzz.db`, fuzzed method by method, then with
    `mid_stream_examples` sequences of each kind that misbehave mid-stream. Strict: raise at
    the first problem (a test); otherwise count everything and report (a benchmark)."""
    report = Report()
    db = root / "fuzz.db"
    errors = _ErrorLog()
    started = time.monotonic()
    with LocalControlPlane(db) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        fixtures = setup_fixtures(server, channel)
        before = protected_rows(db, VICTIM, fixtures.created_until_us)
        report.protected_row_count = sum(len(rows) for rows in before.values())
        logging.getLogger().addHandler(errors)
        try:
            fuzzer = Fuzzer(channel, fixtures, report)
            chosen = methods or all_methods()
            # PurgeOwnerData with the attacker's own key deletes the attacker's worker token and
            # sessions, which the mid-stream sequences use: it goes last.
            last = [m for m in chosen if m.name in _SELF_DESTRUCTIVE]
            for method in [m for m in chosen if m.name not in _SELF_DESTRUCTIVE]:
                fuzzer.fuzz(method, examples_per_method, strict=strict, derandomize=derandomize)
            if mid_stream_examples:
                fuzzer.fuzz_mid_stream(mid_stream_examples, strict=strict, derandomize=derandomize)
            for method in last:
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
        report = await asyncio.to_thread(
            run_fuzz,
            pathlib.Path(tmp),
            BENCH_EXAMPLES_PER_METHOD,
            derandomize=True,
            mid_stream_examples=BENCH_MID_STREAM_EXAMPLES,
        )
    emit(
        "fuzz_requests",
        report.requests,
        "requests",
        methods=len(report.by_method),
        mid_stream_sequences=2 * BENCH_MID_STREAM_EXAMPLES,
        # (the `_shared` counts are the StreamWorkerEvents share of the others, not more)
        mid_stream_malformed_messages=sum(
            v for k, v in report.mid_stream.items() if "_malformed_" in k and not k.endswith("_shared")
        ),
        mid_stream_malformed_shared=report.mid_stream["events_malformed_after_ack_shared"],
        refused_in_band=report.mid_stream["events_refused_in_band"],
        seconds=round(report.seconds, 1),
    )
    emit("fuzz_internal_errors", report.internal_errors, "responses")
    for line in [*report.findings[:20], *report.logged_errors[:20]]:
        print(f"fuzz: {line}", file=sys.stderr)
    if not report.still_serving:
        print("fuzz: the control plane stopped serving", file=sys.stderr)
    if not report.rows_unchanged:
        print("fuzz: the victim's stored rows changed", file=sys.stderr)
    return report.passed and report.internal_errors == 0
