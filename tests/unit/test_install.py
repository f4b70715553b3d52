"""A fresh clone installs exactly what is committed and stays clean: the Makefile installs the
npm tools with `npm ci` (which never rewrites package-lock.json), and the lock file is
complete, so `npm install` has nothing to add either: every dependency of every locked
package, optional platform packages (buf's and Codex's native binaries) included, has its own
entry with its version and integrity."""

from __future__ import annotations

import json
import re
import subprocess

from tests.helpers.processes import ROOT

LOCK = ROOT / "package-lock.json"


def lock_problems(lock: dict, manifest: dict) -> list[str]:
    """What `npm install` would add to or change in `lock`, given package.json `manifest`."""
    packages: dict[str, dict] = lock.get("packages", {})
    problems = []
    root = packages.get("", {})
    for field in ("dependencies", "devDependencies", "optionalDependencies"):
        if root.get(field, {}) != manifest.get(field, {}):
            problems.append(f"the lock's root {field} differ from package.json's")
    for path, entry in packages.items():
        if path and not entry.get("link"):
            for field in ("version", "integrity"):
                if not entry.get(field):
                    problems.append(f"{path}: no {field}")
        wanted = {
            **entry.get("dependencies", {}),
            **entry.get("optionalDependencies", {}),
            **{
                name: spec
                for name, spec in entry.get("peerDependencies", {}).items()
                if not entry.get("peerDependenciesMeta", {}).get(name, {}).get("optional")
            },
        }
        if not path:
            wanted.update(entry.get("devDependencies", {}))
        for name in wanted:
            if _resolve(packages, path, name) is None:
                problems.append(f"{path or 'package.json'}: {name} is not in the lock")
    return problems


def _resolve(packages: dict[str, dict], path: str, name: str) -> str | None:
    """Where Node finds `name` from the package at `path`: its own node_modules, then each
    parent's, up to the top."""
    base = path
    while True:
        candidate = f"{base}/node_modules/{name}" if base else f"node_modules/{name}"
        if candidate in packages:
            return candidate
        if not base:
            return None
        base = base.rsplit("/node_modules/", 1)[0] if "/node_modules/" in base else ""


def test_the_makefile_installs_with_npm_ci() -> None:
    plan = subprocess.run(
        ["make", "-n", "-B", "node_modules/.installed"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    npm = [line for line in plan.splitlines() if re.match(r"^npm\b", line)]
    assert npm and all(line.startswith("npm ci ") for line in npm), plan


def test_the_lock_file_is_complete() -> None:
    lock = json.loads(LOCK.read_text(encoding="utf-8"))
    manifest = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    assert lock["lockfileVersion"] == 3
    assert lock_problems(lock, manifest) == []
    # Every platform's binary of buf and Codex is recorded, not only this machine's.
    for platform_package in ("@bufbuild/buf-darwin-arm64", "@bufbuild/buf-win32-x64", "@openai/codex-linux-arm64"):
        assert f"node_modules/{platform_package}" in lock["packages"]


def test_the_checker_finds_a_missing_platform_package() -> None:
    lock = json.loads(LOCK.read_text(encoding="utf-8"))
    manifest = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    del lock["packages"]["node_modules/@bufbuild/buf-darwin-arm64"]
    lock["packages"]["node_modules/typescript"].pop("integrity")
    assert lock_problems(lock, manifest) == [
        "node_modules/@bufbuild/buf: @bufbuild/buf-darwin-arm64 is not in the lock",
        "node_modules/typescript: no integrity",
    ]
