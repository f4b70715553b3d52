"""The HTTP port's codecs on the generated messages: binary and canonical JSON both ways,
pre-encoded event batches, and requests that do not decode refused naming `request`."""

from __future__ import annotations

import json

import pytest
from connectrpc.errors import ConnectError
from google.protobuf import json_format

from tether.control_plane.http._codecs import Encoded, JsonCodec, ProtoCodec
from tether.v1 import resources_pb2, session_service_pb2


def _batch(seq: int, text: str) -> session_service_pb2.StreamSessionEventsResponse:
    event = resources_pb2.Event(session_id="ses_1", seq=seq, turn_id="trn_1")
    event.body.output.text = text
    return session_service_pb2.StreamSessionEventsResponse(events=[event])


def test_json_is_the_canonical_mapping_both_ways() -> None:
    codec = JsonCodec()
    request = session_service_pb2.StreamSessionEventsRequest(session_id="ses_1", after_seq=2**40)
    encoded = codec.encode(request)
    assert json.loads(encoded) == {"sessionId": "ses_1", "afterSeq": str(2**40)}
    assert codec.decode(encoded, session_service_pb2.StreamSessionEventsRequest) == request
    # Unknown fields are ignored, as the binary encoding keeps them.
    assert codec.decode(b'{"sessionId": "s", "addedLater": 1}', session_service_pb2.GetSessionRequest).session_id == "s"


def test_pre_encoded_batches_encode_as_their_message() -> None:
    json_codec, proto_codec = JsonCodec(), ProtoCodec()
    for seq in range(1, 300):  # past the JSON codec's memory of recent batches
        batch = _batch(seq, f"line {seq}")
        data = batch.SerializeToString()
        wrapped = Encoded(data, session_service_pb2.StreamSessionEventsResponse)
        assert proto_codec.encode(wrapped) is data
        expected = json.loads(json_format.MessageToJson(batch))
        assert json.loads(json_codec.encode(wrapped)) == expected
        assert json.loads(json_codec.encode(Encoded(data, session_service_pb2.StreamSessionEventsResponse))) == expected
    # An older batch, forgotten since, still encodes right.
    first = _batch(1, "line 1")
    assert json.loads(
        json_codec.encode(Encoded(first.SerializeToString(), session_service_pb2.StreamSessionEventsResponse))
    ) == json.loads(json_format.MessageToJson(first))


@pytest.mark.parametrize(
    ("codec", "data", "how"),
    [
        (JsonCodec(), b"{not json", "JSON"),
        (JsonCodec(), b'{"sessionId": 5}', "JSON"),
        (ProtoCodec(), b"\xff\xff\xff", "the protobuf encoding is corrupt"),
    ],
)
def test_a_request_that_does_not_decode_names_request(codec, data: bytes, how: str) -> None:
    with pytest.raises(ConnectError) as caught:
        codec.decode(data, session_service_pb2.GetSessionRequest)
    err = caught.value
    assert err.code.value == "invalid_argument"
    assert err.message.startswith("request: is not a valid tether.v1.GetSessionRequest message")
    assert how in err.message
    assert [d.type_name for d in err.details] == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
