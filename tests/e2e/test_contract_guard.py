"""The contract guard: `buf breaking` against the released contract (contract/tether-v1.binpb)
passes additive changes and fails the build on a broken copy of the protos."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from tests.helpers.processes import ROOT

BUF = ROOT / "node_modules" / ".bin" / "buf"
BASELINE = ROOT / "contract" / "tether-v1.binpb"


@pytest.fixture
def contract_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the module (buf.yaml and proto/) that a test may edit."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    return tmp_path


def guard(module: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", str(module), "--against", str(BASELINE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def edit(module: pathlib.Path, file: str, old: str, new: str) -> None:
    path = module / "proto" / "tether" / "v1" / file
    text = path.read_text()
    assert old in text, f"{old!r} not in {file}"
    path.write_text(text.replace(old, new, 1))


def test_make_test_runs_the_guard() -> None:
    plan = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "buf breaking --against contract/tether-v1.binpb" in plan


def test_the_contract_as_it_stands_passes(contract_copy: pathlib.Path) -> None:
    done = guard(contract_copy)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_additive_change_passes(contract_copy: pathlib.Path) -> None:
    edit(
        contract_copy,
        "resources.proto",
        "  uint64 turn_count = 13;\n",
        "  uint64 turn_count = 13;\n  // A field added later.\n  string added_later = 99;\n",
    )
    done = guard(contract_copy)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_renamed_field_fails(contract_copy: pathlib.Path) -> None:
    edit(contract_copy, "resources.proto", "  uint64 turn_count = 13;", "  uint64 turns = 13;")
    done = guard(contract_copy)
    assert done.returncode != 0
    assert 'Field "13" on message "Session" changed name from "turn_count" to "turns"' in done.stdout


def test_a_removed_rpc_fails(contract_copy: pathlib.Path) -> None:
    edit(contract_copy, "worker_service.proto", "rpc Heartbeat(HeartbeatRequest) returns (HeartbeatResponse);", "")
    done = guard(contract_copy)
    assert done.returncode != 0
    assert 'Previously present RPC "Heartbeat" on service "WorkerService" was deleted' in done.stdout


def test_a_changed_field_type_fails(contract_copy: pathlib.Path) -> None:
    edit(contract_copy, "resources.proto", "  uint64 turn_count = 13;", "  string turn_count = 13;")
    done = guard(contract_copy)
    assert done.returncode != 0
    assert '"turn_count"' in done.stdout and "type" in done.stdout
