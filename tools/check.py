"""The code gate `make check` (and so `make test`) runs: ruff, mypy and the import contracts.

The distribution maps its folders under one `tether` package (pyproject.toml: `sdk/` is
`tether.sdk`, `control_plane/` is `tether.control_plane`, ...). The editable install resolves
that at run time with an import hook, which static tools do not run, so this lays the same
tree out as symlinks in `.venv/tether-tree/` and points mypy and import-linter at it. Paths in
their output are mapped back to the repository's folders.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
TREE = ROOT / ".venv" / "tether-tree"
BIN = pathlib.Path(sys.executable).parent


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir: import name -> folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"]["package-dir"])


def lay_out_tree() -> dict[str, str]:
    """Symlink every mapped folder under TREE/tether; returns tree path prefix -> repo folder."""
    mapping = package_dirs()
    root = TREE / "tether"
    root.mkdir(parents=True, exist_ok=True)
    top = ROOT / mapping["tether"]
    back = {}
    for entry in top.iterdir():  # the generated top level (tether/__init__.py, v1/, py.typed)
        if entry.name != "__pycache__":
            _link(root / entry.name, entry)
            back[f"tether/{entry.name}"] = f"{mapping['tether']}/{entry.name}"
    for name, folder in mapping.items():
        if name == "tether":
            continue
        sub = name.removeprefix("tether.")
        _link(root / sub, ROOT / folder)
        back[f"tether/{sub}"] = folder
    return back


def _link(link: pathlib.Path, target: pathlib.Path) -> None:
    if link.is_symlink() and pathlib.Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def run(
    what: str, args: list[str], cwd: pathlib.Path, back: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> bool:
    print(f"--- {what}", flush=True)
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env)
    out = done.stdout + done.stderr
    for prefix, folder in sorted((back or {}).items(), key=lambda kv: -len(kv[0])):
        out = re.sub(rf"(^|\s){re.escape(prefix)}/", rf"\g<1>{folder}/", out, flags=re.M)
    print(out.rstrip(), flush=True)
    return done.returncode == 0


def main() -> int:
    back = lay_out_tree()
    env = {**os.environ, "PYTHONPATH": str(TREE)}
    packages = [f"-p{name}" for name in package_dirs() if name != "tether"]
    ok = run("ruff check", [str(BIN / "ruff"), "check", "."], ROOT)
    ok &= run("ruff format --check", [str(BIN / "ruff"), "format", "--check", "."], ROOT)
    ok &= run(
        "mypy",
        [str(BIN / "mypy"), "--config-file", str(ROOT / "pyproject.toml"), *packages],
        TREE,
        back,
        # mypy runs in the tree, so its cache is named here rather than relative to its cwd.
        env={**env, "MYPY_CACHE_DIR": str(ROOT / ".venv" / "mypy-cache")},
    )
    ok &= run(
        "import contracts",
        [str(BIN / "lint-imports"), str(ROOT / "pyproject.toml"), "--no-cache"],
        ROOT,
        back,
        env=env,
    )
    print("code gate: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
