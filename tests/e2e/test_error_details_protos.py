"""The google/rpc protos beside the contract (proto/google/rpc) are what a client in another
language needs to decode Tether's errors: `buf build` of the module yields them, and messages
built from them alone decode the `grpc-status-details-bin` trailer the control plane sends."""

from __future__ import annotations

import pathlib
import subprocess

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.helpers.processes import ROOT
from tether.control_plane.api._errors import status_for
from tether.control_plane.domain import errors

BUF = ROOT / "node_modules" / ".bin" / "buf"


def module_image(tmp_path: pathlib.Path) -> descriptor_pb2.FileDescriptorSet:
    """The contract module as `buf build` sees it, imports included."""
    out = tmp_path / "image.binpb"
    done = subprocess.run([str(BUF), "build", "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    image = descriptor_pb2.FileDescriptorSet()
    image.ParseFromString(out.read_bytes())
    return image


def test_the_module_carries_the_error_detail_protos(tmp_path: pathlib.Path) -> None:
    files = {f.name: f for f in module_image(tmp_path).file}
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto"} <= set(files)
    messages = {m.name for m in files["google/rpc/error_details.proto"].message_type}
    assert {"ErrorInfo", "BadRequest"} <= messages
    assert [m.name for m in files["google/rpc/status.proto"].message_type] == ["Status"]


def test_the_protos_alone_decode_the_status_trailer(tmp_path: pathlib.Path) -> None:
    # A pool holding only what buf built from proto/ (no googleapis-common-protos): what a
    # client generated from this repository has.
    classes = message_factory.GetMessages(list(module_image(tmp_path).file), pool=descriptor_pool.DescriptorPool())
    status_cls = classes["google.rpc.Status"]
    info_cls = classes["google.rpc.ErrorInfo"]
    bad_cls = classes["google.rpc.BadRequest"]

    _, sent = status_for(errors.InvalidArgument("session_id", "must not be empty"))
    trailer = sent.SerializeToString()  # the value of grpc-status-details-bin

    status = status_cls.FromString(trailer)
    assert status.message == "session_id: must not be empty"
    by_type = {d.type_url.rsplit("/", 1)[-1]: d.value for d in status.details}
    info = info_cls.FromString(by_type["google.rpc.ErrorInfo"])
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_ARGUMENT",
        "tether.dev",
        {"field": "session_id"},
    )
    bad = bad_cls.FromString(by_type["google.rpc.BadRequest"])
    assert [(v.field, v.description) for v in bad.field_violations] == [("session_id", "must not be empty")]
