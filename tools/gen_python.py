"""Generate gen/python from proto/ with grpcio-tools; with --check, fail on drift instead.

One command produces every generated Python file, so CI can regenerate into a scratch
directory and compare it byte for byte with what is committed.
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "gen" / "python"


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
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


def tree(root: pathlib.Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    check = parser.parse_args().check
    if not check:
        shutil.rmtree(OUT / "tether", ignore_errors=True)
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        generate(fresh)
        want, have = tree(fresh), tree(OUT)
        drift = sorted(want ^ have) + sorted(
            f for f in want & have if not filecmp.cmp(fresh / f, OUT / f, shallow=False)
        )
    if drift:
        print("gen/python is out of date with proto/ (run `make gen`):", *drift, sep="\n  ")
        return 1
    print("gen/python matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
