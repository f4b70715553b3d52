"""The two encodings the HTTP port speaks, on the generated `google.protobuf` messages.

`proto` (binary, as on the gRPC port) and `json` (the canonical protobuf JSON mapping, field
names in lowerCamelCase, which connect-web sends by default and curl users write). A request
that does not decode is refused as the gRPC port refuses one: INVALID_ARGUMENT with a
BadRequest naming `request`. A response handler may yield `Encoded` bytes (the event stream
encodes each batch once for all its subscribers); the binary codec passes them through and the
JSON codec converts them, once per batch however many JSON subscribers follow the session (it
keeps the last few conversions).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from connectrpc.errors import ConnectError
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from ..domain import errors
from ._context import domain_error


class Encoded(NamedTuple):
    """A response message already serialized, and its type."""

    data: bytes
    type: type[Message]


def _malformed(message_class: type[Message], how: str) -> ConnectError:
    return domain_error(
        errors.InvalidArgument("request", f"is not a valid {message_class.DESCRIPTOR.full_name} message ({how})")
    )


class ProtoCodec:
    """`application/proto`, `application/grpc-web+proto`, `application/grpc`."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message | Encoded) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message:
        try:
            return message_class.FromString(bytes(data))
        except DecodeError:
            raise _malformed(message_class, "the protobuf encoding is corrupt") from None


class JsonCodec:
    """`application/json`, `application/grpc-web+json`. Unknown fields are ignored, as the
    binary encoding keeps them, so an older control plane still serves a newer client."""

    _RECENT = 256  # event batches whose JSON is kept: a live batch reaches every subscriber at once

    def __init__(self) -> None:
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()

    def name(self) -> str:
        return "json"

    def encode(self, message: Message | Encoded) -> bytes:
        if not isinstance(message, Encoded):
            return json_format.MessageToJson(message, indent=None).encode()
        # Subscribers share the batch's bytes object, so a hit compares by identity.
        cached = self._recent.get(message.data)
        if cached is None:
            decoded = message.type.FromString(message.data)
            cached = self._recent[message.data] = json_format.MessageToJson(decoded, indent=None).encode()
            if len(self._recent) > self._RECENT:
                self._recent.popitem(last=False)
        return cached

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Message:
        message = message_class()
        try:
            json_format.Parse(bytes(data), message, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise _malformed(message_class, f"JSON: {exc}") from None
        return message
