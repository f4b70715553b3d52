"""Generate gen/ from proto/; with --check, fail on drift instead.

gen/python comes from grpcio-tools (messages, stubs, type stubs) for proto/tether; gen/ts comes
from `buf generate` with the local protoc-gen-es plugin that buf.gen.yaml names, for all of
proto/, google/rpc's status and error details included. One command
produces every generated file, so CI can regenerate into a scratch directory and compare it
byte for byte with what is committed.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import subprocess
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "gen" / "python"
TS_OUT = ROOT / "gen" / "ts"
BUF = ROOT / "node_modules" / ".bin" / "buf"


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # Only the contract: proto/google/rpc is there for other languages' `buf generate`; Python
    # takes google.rpc from googleapis-common-protos, and a second copy would shadow it.
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "tether").rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Packages need an __init__ so setuptools finds them; the proto package path equals the
    # Python import path (tether.v1), so nothing is rewritten.
    for d in [p for p in out.rglob("*") if p.is_dir()]:
        (d / "__init__.py").touch()
    # `tether` is the distribution's one top-level package (the SDK, control plane and worker
    # are mapped under it by pyproject.toml); the marker tells type checkers it is typed.
    (out / "tether" / "py.typed").touch()


def generate_ts(base: pathlib.Path) -> pathlib.Path:
    """Run buf.gen.yaml with its output rooted at `base`; return where gen/ts landed."""
    if not BUF.exists():
        raise SystemExit("buf is not installed: run `npm ci` (make does it for you)")
    subprocess.run([str(BUF), "generate", "--output", str(base)], cwd=ROOT, check=True)
    return base / "gen" / "ts"


def tree(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    check = parser.parse_args().check
    if not check:
        shutil.rmtree(OUT / "tether", ignore_errors=True)
        generate(OUT)
        shutil.rmtree(TS_OUT, ignore_errors=True)
        generate_ts(ROOT)
        return 0
    drift: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = pathlib.Path(tmp)
        generate(scratch / "python")
        fresh_ts = generate_ts(scratch / "ts-base")
        for fresh, committed in ((scratch / "python", OUT), (fresh_ts, TS_OUT)):
            want, have = tree(fresh), tree(committed)
            rel = committed.relative_to(ROOT)
            drift += [f"{rel}/{f}" for f in sorted(want ^ have)]
            drift += [
                f"{rel}/{f}" for f in sorted(want & have) if not filecmp.cmp(fresh / f, committed / f, shallow=False)
            ]
    if drift:
        print("gen/ is out of date with proto/ (run `make gen`):", *drift, sep="\n  ")
        return 1
    print("gen/python and gen/ts match proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
