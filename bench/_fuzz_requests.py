"""The fuzz run's requests and how their answers are judged: every RPC's method, hypothesis
strategies for its request messages (valid and corrupt encodings) and for the credentials a call
carries, and what makes an answer wrong.

The server, the fixtures, the runner and the report are in bench/fuzz.py; the mid-stream
sequences in bench/_fuzz_streams.py.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

from tether.v1 import admin_service_pb2 as apb
from tether.v1 import session_service_pb2 as spb
from tether.v1 import worker_service_pb2 as wpb

UNARY_TIMEOUT_S = 10.0  # a unary call this slow is a hang, reported as such
_DETAILS_KEY = "grpc-status-details-bin"
VICTIM = "victim"
ATTACKER = "attacker"
# Methods that may end the attacker's own fixtures; run last so the others still reach them.
_DESTRUCTIVE = {"DeleteSession", "ArchiveSession", "DrainWorker", "RevokeWorkerToken"}


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
            value_field = f.message_type.fields_by_name["value"]
            if value_field.type == d.FieldDescriptor.TYPE_MESSAGE:
                return st.dictionaries(key, value, max_size=4)
            # Many entries of one value of the map's own type (a label map over its limit).
            many = st.tuples(st.integers(60, 70), value).map(lambda nv: {f"k{i}": nv[1] for i in range(nv[0])})
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


# -- answers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    rich: bool = False  # a google.rpc.Status with tether's ErrorInfo came with it
    cut: bool = False  # a server stream this side ended (deadline or enough responses)


def outcome_of(err: grpc.RpcError, *, cut_by_deadline: bool = False) -> Outcome:
    """The answer a failed call got. `cut_by_deadline`: a deadline is this side's cut, not a
    hang (a live server stream never ends by itself)."""
    code = err.code()
    rich = any(k == _DETAILS_KEY for k, _ in err.trailing_metadata() or ())
    cut = cut_by_deadline and code == grpc.StatusCode.DEADLINE_EXCEEDED
    return Outcome(code, err.details() or "", rich, cut)


def problem(outcome: Outcome) -> str | None:
    """What is wrong with an answer, or None. Refusals are expected; these are not."""
    code = outcome.code
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{code.name}: {outcome.details}"
    if outcome.cut or code == grpc.StatusCode.OK:
        return None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within the call's deadline ({UNARY_TIMEOUT_S:g}s for a unary call)"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in outcome.details:
        return None  # gRPC's own message-size limit, before any handler
    if not outcome.rich:
        return f"{code.name} without a tether ErrorInfo: {outcome.details}"
    return None
