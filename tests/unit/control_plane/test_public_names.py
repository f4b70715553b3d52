"""The domain's public names: what api/, store/ and the composition root may rely on."""

from __future__ import annotations

from tether.control_plane.domain import hub, messages, ports


def test_the_hub_module_exports_the_facade_and_what_its_methods_take_and_return() -> None:
    assert sorted(hub.__all__) == sorted(
        [
            "AnswerMsg",
            "BodyCodec",
            "CloseMsg",
            "DrainMsg",
            "GrantMsg",
            "Hub",
            "HubLoad",
            "IncomingEvent",
            "IngestResult",
            "InterruptMsg",
            "OfferMsg",
            "RenewedMsg",
            "ResumeSource",
            "Retention",
            "RetentionPolicy",
            "RevokeMsg",
            "SessionBundle",
            "SessionView",
            "SnapshotRequestMsg",
            "Timings",
            "WorkerMsg",
            "WorkerStatus",
        ]
    )
    assert all(hasattr(hub, name) for name in hub.__all__)


def test_the_ports_are_the_storage_and_codec_protocols() -> None:
    assert sorted(ports.__all__) == [
        "BodyCodec",
        "Changes",
        "CredentialStore",
        "GroupCommitWriter",
        "LeaseMove",
        "ListedSession",
        "LoadedSession",
        "NullObserver",
        "NullTurnTracer",
        "Observer",
        "SessionQuery",
        "SessionReader",
        "TurnTracer",
        "WriteFailed",
    ]
    assert set(messages.__all__) <= set(dir(messages))
