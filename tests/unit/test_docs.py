"""Every code block in README.md and docs/*.md runs as written, checked without starting anything.

- ``sh`` / ``bash`` / ``console`` blocks: each ``tether ...`` command (also ``.venv/bin/tether``,
  after ``VAR=value`` assignments, split at ``;``, ``&&``, ``||``, ``|`` and ``&``) is parsed by
  the real click command tree, one subcommand at a time, with ``make_context``; each
  ``make TARGET`` names a target of the Makefile; each ``python -m tether...`` names a module
  that exists.
- ``python`` blocks compile, and each ``tether`` import in them resolves, as does each
  attribute read from an imported ``tether`` module (``sdk.AsyncClient``).
- ``toml`` and ``json`` blocks parse.
- Every block names its language (``text`` for output, diagrams and anything not runnable), and
  every relative link points at a file that exists.

A failure names the file, the line and the problem, one line per problem.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import tomllib
import types
from collections.abc import Iterator
from dataclasses import dataclass

import click
import pytest

from tests.helpers.processes import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "console", "shell"}
CHECKED = SHELL | {"python", "toml", "json", "text"}
SEPARATORS = {";", "&&", "||", "|", "&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)\s*(?P<lang>[\w+-]*)\s*$")
# Pages another change is writing; a link to one is fine until it lands, and checked after.
PENDING: set[pathlib.Path] = set()
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    path: pathlib.Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]  # the block's lines, the fence's indentation removed

    def where(self, offset: int = 0) -> str:
        """`file:line`, `offset` lines below the opening fence."""
        return f"{shown(self.path)}:{self.line + offset}"


def shown(path: pathlib.Path) -> str:
    """A path as a failure names it: relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def blocks(path: pathlib.Path) -> Iterator[Block | str]:
    """The fenced blocks of a Markdown file; an unclosed fence is yielded as a problem."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            yield f"{shown(path)}:{i + 1}: the code block is never closed"
            return
        yield Block(path, i + 1, opening["lang"].lower(), body)
        i = j + 1


# -- shell blocks ---------------------------------------------------------------------------


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(offset of the first line, command line): continuations and multi-line quotes joined,
    console prompts stripped, console output skipped."""
    pending = ""
    start = 0
    for offset, raw in enumerate(block.lines, start=1):
        line = raw
        if not pending:
            start = offset
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if _unbalanced(pending) is not None:
            pending += "\n"  # a quote spans the line break: keep reading
            continue
        yield start, pending
        pending = ""
    if pending:
        yield start, pending


def _unbalanced(text: str) -> str | None:
    try:
        shlex.split(text, comments=True)
    except ValueError as exc:
        return str(exc)
    return None


def commands(text: str) -> Iterator[list[str]]:
    """The simple commands of one shell line, split at ; && || | & and with comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    current: list[str] = []
    for token in lexer:
        if token in SEPARATORS:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        rule = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if rule and not line.startswith((".", "\t")):
            targets.update(rule[1].split())
    return targets


def _touch_existing_paths(command: click.Command, args: list[str], cwd: pathlib.Path) -> None:
    """Docs name placeholder files (server.pem); make the relative ones that a `Path(exists=True)`
    option wants, so that the parse checks the command line rather than this machine."""
    wanted = {
        opt: param.type
        for param in command.params
        if isinstance(param, click.Option) and isinstance(param.type, click.Path) and param.type.exists
        for opt in param.opts
    }
    for i, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name not in wanted:
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else "")
        target = cwd / value
        if value and not pathlib.Path(value).is_absolute() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if wanted[name].dir_okay and not wanted[name].file_okay:
                target.mkdir()
            else:
                target.touch()


def parse_tether(args: list[str], cwd: pathlib.Path) -> str | None:
    """Parse `tether ARGS` with the real command tree, as click would before invoking anything.
    Returns the problem, or None."""
    from tether.cli._group import main

    command: click.Command = main
    name = "tether"
    parent: click.Context | None = None
    try:
        while True:
            _touch_existing_paths(command, args, cwd)
            ctx = command.make_context(name, list(args), parent=parent, resilient_parsing=False)
            if not isinstance(command, click.Group):
                return None
            protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
            rest = [*protected, *ctx.args]
            if not rest:
                if command.invoke_without_command:
                    return None
                return f"`{ctx.command_path}` needs a subcommand"
            sub_name, sub, args = command.resolve_command(ctx, rest)
            assert sub is not None and sub_name is not None
            command, name, parent = sub, sub_name, ctx
    except click.exceptions.Exit:
        return None  # --help or --version: valid, and it would only print
    except click.ClickException as exc:
        return f"{exc.format_message()}"


def check_shell(block: Block, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    problems = []
    targets = make_targets()
    for offset, text in logical_lines(block):
        where = block.where(offset)
        problem = _unbalanced(text)
        if problem:
            problems.append(f"{where}: the shell line does not parse ({problem}): {text!r}")
            continue
        for words in commands(text):
            env = {}
            while words and ASSIGNMENT.match(words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            if not words:
                continue
            program, args = words[0], words[1:]
            if program == "tether" or program.endswith("/tether"):
                with monkeypatch.context() as m:
                    for key in [k for k in os.environ if k.startswith("TETHER_")]:
                        m.delenv(key)
                    for key, value in env.items():
                        m.setenv(key, value)
                    cwd = tmp_path / f"cwd-{block.line}-{offset}"
                    cwd.mkdir(exist_ok=True)
                    m.chdir(cwd)
                    problem = parse_tether(args, cwd)
                if problem:
                    problems.append(f"{where}: `{shlex.join(words)}`: {problem}")
            elif program == "make":
                for target in [a for a in args if not a.startswith("-") and "=" not in a]:
                    if target not in targets:
                        problems.append(f"{where}: `make {target}`: the Makefile has no target {target!r}")
            elif (program.endswith(("python", "python3"))) and args[:1] == ["-m"] and len(args) > 1:
                module = args[1]
                if module.split(".")[0] in {"tether", "bench"} and importlib.util.find_spec(module) is None:
                    problems.append(f"{where}: `python -m {module}`: no such module")
    return problems


# -- python blocks --------------------------------------------------------------------------


def check_python(block: Block) -> list[str]:
    source = "\n".join(block.lines) + "\n"
    try:
        compile(source, block.where(), "exec")
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"{block.where(exc.lineno or 0)}: the Python block does not compile: {exc.msg}"]
    problems = []
    bound: dict[str, object] = {}  # local name -> the tether module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "tether":
                    continue
                try:
                    module = importlib.import_module(alias.name)
                except ImportError as exc:
                    problems.append(f"{block.where(node.lineno)}: `import {alias.name}`: {exc}")
                    continue
                if alias.asname:
                    bound[alias.asname] = module
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tether":
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                problems.append(f"{block.where(node.lineno)}: `from {node.module} import ...`: {exc}")
                continue
            for alias in node.names:
                value = _import_name(module, node.module, alias.name)
                if value is None:
                    problems.append(
                        f"{block.where(node.lineno)}: `from {node.module} import {alias.name}`: no such name"
                    )
                elif isinstance(value, types.ModuleType):
                    bound[alias.asname or alias.name] = value
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            module = bound[node.value.id]
            if not hasattr(module, node.attr):
                problems.append(
                    f"{block.where(node.lineno)}: `{node.value.id}.{node.attr}`: "
                    f"{getattr(module, '__name__', node.value.id)} has no {node.attr!r}"
                )
    return problems


def _import_name(module: object, module_name: str, name: str) -> object | None:
    if hasattr(module, name):
        return getattr(module, name)
    try:
        return importlib.import_module(f"{module_name}.{name}")
    except ImportError:
        return None


# -- the test -------------------------------------------------------------------------------


def check_links(path: pathlib.Path) -> list[str]:
    problems = []
    in_fence = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
        if in_fence:
            continue
        for link in LINK.finditer(line):
            target = link["target"].split("#")[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # an anchor in this page, or a URL
            resolved = (path.parent / target).resolve()
            if not resolved.exists() and resolved not in PENDING:
                problems.append(f"{shown(path)}:{number}: the link {link['target']!r} points at nothing")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_runs_as_written(path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch) -> None:
    problems = check_links(path)
    for block in blocks(path):
        if isinstance(block, str):
            problems.append(block)
        elif not block.lang:
            problems.append(f"{block.where()}: the code block names no language (use ```text for output)")
        elif block.lang not in CHECKED:
            problems.append(f"{block.where()}: ```{block.lang} blocks are not checked; use one of {sorted(CHECKED)}")
        elif block.lang in SHELL:
            problems += check_shell(block, tmp_path, monkeypatch)
        elif block.lang == "python":
            problems += check_python(block)
        elif block.lang == "toml":
            try:
                tomllib.loads("\n".join(block.lines))
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{block.where()}: the TOML block does not parse: {exc}")
        elif block.lang == "json":
            try:
                json.loads("\n".join(block.lines))
            except json.JSONDecodeError as exc:
                problems.append(f"{block.where(exc.lineno)}: the JSON block does not parse: {exc.msg}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_promises(tmp_path: pathlib.Path, monkeypatch) -> None:
    """The checks above fail on the mistakes docs make, naming the line."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "\n".join(
            [
                "```sh",
                "tether serve --no-such-flag",
                "tether session create",  # --runtime is required
                "tether worker --runtime nope",
                "tether sesion list",
                "TETHER_API_KEY=k tether pair --ttl-s 60; make no-such-target",
                "tether serve --tls-cert server.pem --tls-key server.key",  # fine: files are placeholders
                "```",
                "```python",
                "from tether import sdk",
                "from tether.sdk import NoSuchClient",
                "sdk.NoSuchError",
                "```",
                "```",
                "untagged",
                "```",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    found = []
    for block in blocks(doc):
        assert isinstance(block, Block)
        if block.lang == "sh":
            found += check_shell(block, tmp_path, monkeypatch)
        elif block.lang == "python":
            found += check_python(block)
    text = "\n".join(found)
    assert f"{doc}:2: `tether serve --no-such-flag`: No such option '--no-such-flag'" in text
    assert f"{doc}:3: `tether session create`: Missing option '--runtime'" in text
    assert f"{doc}:4: `tether worker --runtime nope`: Invalid value for '--runtime'" in text
    assert f"{doc}:5: `tether sesion list`: No such command 'sesion'" in text
    assert f"{doc}:6: `make no-such-target`" in text
    assert f"{doc}:11: `from tether.sdk import NoSuchClient`: no such name" in text
    assert f"{doc}:12: `sdk.NoSuchError`" in text
    assert len(found) == 7, text


# -- the contract's error metadata ----------------------------------------------------------


def error_metadata_keys() -> dict[str, set[str]]:
    """Every `ErrorInfo.metadata` key the control plane sets, with where: the keywords of each
    `super().__init__` in the domain errors, and of each raise of an error class that keeps
    DomainError's `(message, **metadata)`."""
    from tether.control_plane.domain import errors

    classes = {
        name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, errors.DomainError)
    }
    plain = {
        name
        for name, cls in classes.items()
        if not any("__init__" in vars(c) for c in cls.__mro__[: cls.__mro__.index(errors.DomainError)])
    }
    keys: dict[str, set[str]] = {}
    for path in sorted((ROOT / "control_plane").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            is_super = (
                path.name == "errors.py"
                and name == "__init__"
                and isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Call)
                and getattr(func.value.func, "id", "") == "super"
            )
            if not is_super and name not in plain:
                continue
            for keyword in node.keywords:
                if keyword.arg and keyword.arg != "message":
                    keys.setdefault(keyword.arg, set()).add(f"{shown(path)}:{node.lineno}")
    return keys


def test_the_contract_names_every_error_metadata_key() -> None:
    """docs/contract.md's "Errors on the wire" table lists exactly the ErrorInfo metadata keys
    the control plane sets, so a client author knows every key without reading the server."""
    text = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    assert "\n## Errors on the wire\n" in text, "docs/contract.md has no section ## Errors on the wire"
    section = text.split("## Errors on the wire", 1)[1].split("\n## ", 1)[0]
    documented = {
        key
        for row in re.findall(r"^\s*\| (`[^|]+`) \|", section, flags=re.MULTILINE)
        for key in re.findall(r"`([a-z_]+)`", row)
    }
    used = error_metadata_keys()
    assert {"session_id", "lease_epoch", "current_epoch", "field"} <= set(used)  # the scan sees them
    missing = {key: sorted(where) for key, where in used.items() if key not in documented}
    assert not missing, f"docs/contract.md's Errors on the wire does not name these ErrorInfo metadata keys: {missing}"
    stale = documented - set(used)
    assert not stale, f"docs/contract.md's Errors on the wire names keys the control plane never sets: {sorted(stale)}"
