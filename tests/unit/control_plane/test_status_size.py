"""A status must fit the trailers a gRPC client accepts (8 KiB), whatever its message quotes."""

from __future__ import annotations

import base64
import urllib.parse

from tether.control_plane.api._errors import MAX_MESSAGE_BYTES, status_for
from tether.control_plane.domain import errors

CLIENT_TRAILER_LIMIT = 8 * 1024


def trailer_bytes(err: errors.DomainError) -> int:
    """What the status costs on the wire: grpc-message percent-encoded, the details in base64."""
    _, status = status_for(err)
    message = urllib.parse.quote(status.message.encode("utf-8"), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return len(message) + len(base64.b64encode(status.SerializeToString()))


def test_a_huge_message_is_cut_and_says_so():
    _, status = status_for(errors.InvalidArgument("response_json", "x" * 60_000))
    assert len(status.message.encode()) < MAX_MESSAGE_BYTES + 60
    assert status.message.endswith("more characters cut)")
    assert trailer_bytes(errors.InvalidArgument("response_json", "x" * 60_000)) < CLIENT_TRAILER_LIMIT


def test_a_message_of_four_byte_characters_still_fits():
    err = errors.InvalidArgument("response_json", "\U0001f642" * 20_000)
    assert trailer_bytes(err) < CLIENT_TRAILER_LIMIT
    _, status = status_for(err)
    status.message.encode("utf-8")  # cut on a character boundary


def test_a_short_message_is_untouched():
    _, status = status_for(errors.InvalidArgument("input", "must not be empty"))
    assert status.message == "input: must not be empty"
