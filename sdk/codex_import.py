"""Import a thread that ran with the plain Codex CLI: its rollout file as a Tether session bundle.

Codex records every thread in a rollout file, JSON Lines under
``$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<thread id>.jsonl``. `bundle_from_rollout`
reads one and returns a session bundle (format version 1, docs/bundles.md) that
`ImportSession` stores as a new session of the ``codex`` runtime; the session's next turn runs
on a worker, whose Codex is handed the thread's model-visible history verbatim::

    path = find_rollout(default_codex_home(), "01a2489b-be95-7043-977f-cefbbf73ecea")
    data = bundle_from_rollout(path)  # bytes, ready for ImportSession

What is read. Each line is one JSON object ``{"timestamp", "type", "payload"}`` (Codex may add
keys such as ``ordinal`` and ``metadata``; they are ignored). The first line is the
``session_meta``; a turn runs from an ``event_msg`` ``task_started`` to its ``task_complete``
(``turn_aborted`` for an interrupted turn). Between them, ``response_item`` lines are the items
the model sees, in order; ``event_msg`` lines ``item_completed`` (commands, file changes) and
``token_count`` give the items and token usage people see. Other lines are ignored.

A rollout is supported when its first line is a ``session_meta`` whose ``cli_version`` is in
`SUPPORTED_CLI_VERSIONS`: the versions this format was checked against, which are those the
worker's Codex runtime runs (the history is handed to that Codex verbatim). Refused, with the
line (`RolloutError`): an empty file, a line that is not UTF-8 or not JSON, a line of another
shape, a first line that is not a supported ``session_meta``, a bad timestamp, a thread Codex
compacted (a ``compacted`` line) or rolled back (``thread_rolled_back``), whose model-visible
history is not the items in the file, and a rollout with no turn.

What is produced: a ``session`` (a new id; runtime ``codex``; labels ``imported-from: codex``,
``codex-thread-id`` and ``codex-cli-version``; the title taken from the first input as the
control plane takes it), then per Codex turn a ``turn`` and its events: ``input_received`` (the
user's message), ``turn_started``, then, in file order, ``item_completed`` for agent messages,
reasoning summaries, commands and file changes, ``token_usage`` for each token count, and one
``history_item`` per model-visible item, then the terminal event (``turn_completed``,
``turn_failed`` after an ``agent_error`` when Codex recorded an error, ``turn_interrupted`` for
an aborted turn or one the file ends inside). No requests, no snapshots.

The history round-trips: a worker rebuilding a session's history takes, for a turn that has
``history_item`` events, exactly those items, and hands each item's ``raw_json`` to Codex. So
each model-visible ``response_item`` becomes one ``history_item`` whose ``raw_json`` is its
payload (less Codex's own ``internal_chat_message_metadata_passthrough`` bookkeeping, which the
worker strips from what it records too). Not model-visible, as for the worker: ``developer``
messages and the user messages Codex writes itself (``<environment_context>``, user
instructions, AGENTS.md), which the worker's Codex writes anew for its own thread. Items written
outside a turn (the history a forked or resumed thread was started with) go with the next turn,
or with the last one when no turn follows. A turn that added nothing to the model-visible
history is left out.
"""

from __future__ import annotations

from pathlib import Path

from ._rollout_bundle import BUNDLE_VERSION, Builder
from ._rollout_reader import SUPPORTED_CLI_VERSIONS, RolloutError, Thread, default_codex_home, find_rollout, parse

__all__ = [
    "BUNDLE_VERSION",
    "SUPPORTED_CLI_VERSIONS",
    "RolloutError",
    "bundle_from_rollout",
    "default_codex_home",
    "find_rollout",
]


def bundle_from_rollout(path: Path | str, *, runtime: str = "codex") -> bytes:
    """The session bundle (UTF-8 JSON Lines, format version 1) of the Codex thread whose rollout
    file is `path`, for a session of `runtime`. Raises `RolloutError` for a rollout it does not
    read, OSError when the file cannot be read."""
    data = Path(path).read_bytes()
    lines = list(parse(data))
    return Builder(Thread.read(lines), runtime).bundle()
