"""The web console (web/console, bundled into control_plane/http/console/) in headless Chromium,
driven by Playwright, against a real control plane process (`tether serve --http-port 0
--console`) and two real workers offering the shell and script runtimes.

A person's path through it: create a session, send input and watch its output stream in before
the turn ends; SIGKILL the session's worker and see its next turn run on the other one; answer a
script runtime's approval with its button; see the workers (the killed one disconnected), create a
pairing code and drain a worker. Nothing may be logged to the browser's console as an error on
the way (`console` and `pageerror` events). A screenshot of the session view is saved as an
artifact: under $TETHER_TEST_ARTIFACTS when set, else the test's tmp dir; the path is printed.

The browser is the system Chromium (Debian's `chromium`; $TETHER_CHROMIUM names another). Without
it the test skips saying so, except under CI (the CI variable set), where it fails.

`test_browser_library` runs the library's own tests (web/client/test, node:test on Connect's
in-memory router transport) with node.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers.processes import ROOT, ControlPlaneProcess, Proc, workers_connected
from tether import sdk

HTTP_LINE = re.compile(r"tether HTTP listening on (http://\S+)")
CONSOLE_DIR = ROOT / "control_plane" / "http" / "console"
WEB_DIR = ROOT / "web"
ESBUILD = ROOT / "node_modules" / ".bin" / "esbuild"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
UI_TIMEOUT_MS = 30_000


def _unavailable(reason: str) -> None:
    """Skip with `reason`, or fail under CI, where the browser test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    """The Chromium executable (before any process starts: a skip costs nothing)."""
    named = os.environ.get("TETHER_CHROMIUM")
    if named:
        if not os.access(named, os.X_OK):
            _unavailable(f"TETHER_CHROMIUM={named} is not an executable file")
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    _unavailable(
        f"no Chromium found: none of {', '.join(CHROMIUM_NAMES)} is on PATH and TETHER_CHROMIUM is unset "
        "(install Debian's `chromium` package; .ci/run does when it runs as root)"
    )
    raise AssertionError("unreachable")


def console_built() -> None:
    """Build the console when it is missing or older than its sources (`make test` builds it first)."""
    index = CONSOLE_DIR / "index.html"
    sources = [p for p in WEB_DIR.rglob("*") if p.suffix in {".ts", ".html", ".css"} and "dist" not in p.parts]
    built_at = (
        min((CONSOLE_DIR / f).stat().st_mtime for f in ("index.html", "app.js", "app.css")) if index.exists() else 0
    )
    if built_at and all(p.stat().st_mtime <= built_at for p in sources):
        return
    done = subprocess.run(["make", "web"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "make web failed:\n" + done.stdout + done.stderr


def artifact_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    named = os.environ.get("TETHER_TEST_ARTIFACTS")
    path = pathlib.Path(named) if named else tmp_path / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_worker(procs, target: str, workdir: pathlib.Path, name: str) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "tether.execution_worker", "--control-plane", target, "--name", name]
    args += ["--runtime", "shell", "--runtime", "script", "--workdir", str(workdir), "--slots", "2"]
    return procs(args, name)


@pytest.fixture
def cp_console(tmp_path: pathlib.Path):
    console_built()
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", extra=["--http-port", "0", "--console"])
    cp.start()
    yield cp
    cp.stop()


def http_base_url(cp: ControlPlaneProcess) -> str:
    assert cp.proc is not None
    found = HTTP_LINE.search(cp.proc.output())
    assert found, "the control plane did not print its HTTP port:\n" + cp.proc.output()
    return found[1]


@pytest.mark.timeout(300)
async def test_console_in_chromium(
    chromium: str, cp_console: ControlPlaneProcess, procs, tmp_path: pathlib.Path
) -> None:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError as exc:
        _unavailable(f"Playwright for Python is not installed ({exc}); it is in the dev extra")
    target = cp_console.target
    workers = {name: start_worker(procs, target, tmp_path / name, name) for name in ("w1", "w2")}
    await workers_connected(target, 2)
    async with sdk.AsyncClient(target) as client:
        worker_ids = {w.name: w.worker_id for w in await client.list_workers()}
    assert set(worker_ids) == {"w1", "w2"}
    shot = artifact_dir(tmp_path) / "console-session.png"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1100, "height": 680})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: d.accept())
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            await page.goto(http_base_url(cp_console) + "/console/")
            await expect(page.get_by_test_id("sessions")).to_be_visible()

            # A shell session, created from the console; output streams in before the turn ends.
            await page.get_by_label("runtime").fill("shell")
            await page.get_by_test_id("new-session").click()
            await expect(page.get_by_test_id("session-view")).to_be_visible()
            session_id = await page.get_by_test_id("session-view").get_attribute("data-session-id")
            assert session_id and session_id.startswith("ses_")
            transcript = page.get_by_test_id("transcript")
            await page.get_by_test_id("input").fill("for i in 1 2 3 4; do echo tick-$i; sleep 1; done")
            await page.get_by_test_id("send").click()
            await expect(transcript).to_contain_text("tick-1")
            seen_first = await transcript.inner_text()
            assert "tick-4" not in seen_first and "turn completed" not in seen_first, seen_first
            await expect(transcript).to_contain_text("tick-4")
            await expect(transcript).to_contain_text("turn completed (exit 0)")
            assert "tick-1\ntick-2\ntick-3\ntick-4" in await transcript.inner_text()

            # A long turn, stopped with the Interrupt button.
            worker = page.get_by_test_id("session-worker")
            interrupt = page.get_by_test_id("interrupt")
            await page.get_by_test_id("input").fill("sleep 30")
            await page.get_by_test_id("send").click()
            await expect(interrupt).to_be_enabled()
            await interrupt.click()
            await expect(transcript).to_contain_text("turn interrupted")
            await expect(interrupt).to_be_disabled()

            # Restored onto the other worker, chosen in the list.
            await expect(worker).to_have_text(re.compile("|".join(worker_ids.values())))
            first = await worker.inner_text()
            other = next(wid for wid in worker_ids.values() if wid != first)
            await expect(page.locator(f"[data-testid=restore-to] option[value={other}]")).to_have_count(1)
            await page.get_by_test_id("restore-to").select_option(other)
            await page.get_by_test_id("restore").click()
            await expect(worker).to_have_text(other)

            # That worker is SIGKILLed; the next turn runs on the first one, shown as it moves.
            killed = next(name for name, wid in worker_ids.items() if wid == other)
            survivor = next(name for name, wid in worker_ids.items() if wid == first)
            workers[killed].send_signal(signal.SIGKILL)
            await page.get_by_test_id("input").fill("echo after-the-kill")
            await page.get_by_test_id("send").click()
            await expect(worker).to_have_text(worker_ids[survivor])
            started = transcript.locator(".entry-notice").filter(has_text="turn started")
            await expect(started).to_have_count(3)
            await expect(started.last).to_have_text(f"turn started on worker {worker_ids[survivor]}")
            await expect(transcript.locator(".entry-output").last).to_have_text("after-the-kill\n")
            await expect(page.get_by_test_id("connection")).to_have_text("live")
            await page.screenshot(path=str(shot))
            print(f"\nscreenshot of the session view: {shot}")

            # Forked: the console opens the new session, which names where it came from.
            await page.get_by_test_id("fork").click()
            await expect(page.get_by_test_id("session-forked-from")).to_have_text(session_id)
            fork_id = await page.get_by_test_id("session-view").get_attribute("data-session-id")
            assert fork_id and fork_id != session_id

            # An approval (the script runtime asks for one), answered with its button.
            await page.goto(http_base_url(cp_console) + "/console/#/sessions")
            await page.get_by_label("runtime").fill("script")
            await page.get_by_test_id("new-session").click()
            await expect(page.get_by_test_id("session-view")).to_be_visible()
            script_session = await page.get_by_test_id("session-view").get_attribute("data-session-id")
            assert script_session and script_session != session_id
            await page.get_by_test_id("input").fill("say before\napprove deploy to staging\nsay after")
            await page.get_by_test_id("send").click()
            requests = page.get_by_test_id("requests")
            await expect(requests).to_contain_text("deploy to staging")
            await requests.locator("button[data-decision=accept]").click()
            transcript = page.get_by_test_id("transcript")
            await expect(transcript).to_contain_text("decision: accept")
            await expect(transcript).to_contain_text("answered: accept")
            await expect(transcript).to_contain_text("turn completed (exit 0)")
            await expect(requests).to_be_hidden()

            # Workers: the killed one disconnected; a pairing code; the survivor drained.
            await page.goto(http_base_url(cp_console) + "/console/#/workers")
            rows = page.get_by_test_id("workers")
            killed_row = rows.locator(f"tr[data-worker-id={worker_ids[killed]}]")
            survivor_row = rows.locator(f"tr[data-worker-id={worker_ids[survivor]}]")
            await expect(survivor_row.locator("[data-col=connected]")).to_have_text("yes")
            await expect(survivor_row.locator("[data-col=slots]")).to_have_text("0 / 2")
            await expect(killed_row.locator("[data-col=connected]")).to_have_text("no")
            await page.get_by_test_id("create-pairing-code").click()
            await expect(page.get_by_test_id("code")).to_have_text(re.compile(r"\S{4,}"))
            await survivor_row.get_by_test_id("drain").click()
            await expect(survivor_row.locator("[data-col=draining]")).to_have_text("draining")
        finally:
            await browser.close()
        assert problems == [], "the browser logged errors:\n" + "\n".join(problems)

    # What the console did, read back over gRPC.
    async with sdk.AsyncClient(target) as client:
        turns = (await client.list_turns(session_id)).turns
        assert [(t.input[:4], t.state, t.worker_id) for t in turns] == [
            ("for ", sdk.TurnState.COMPLETED, worker_ids[survivor]),
            ("slee", sdk.TurnState.INTERRUPTED, worker_ids[survivor]),
            ("echo", sdk.TurnState.COMPLETED, worker_ids[survivor]),
        ]
        assert (await client.get_session(fork_id)).forked_from_session_id == session_id
        [request] = await client.list_requests(script_session)
        assert request.summary == "deploy to staging" and request.state is sdk.RequestState.RESOLVED
        assert request.response_json.replace(" ", "") == '{"decision":"accept"}'
        drained = {w.name: w for w in await client.list_workers()}[survivor]
        assert drained.draining
    assert shot.stat().st_size > 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_console_rides_out_a_control_plane_restart(chromium: str, procs, tmp_path: pathlib.Path) -> None:
    """The control plane is SIGKILLed mid-turn while the console follows the session, and
    restarted on the same ports: the page says it is reconnecting, then live again, and the
    transcript holds every line of the turn once, in order (the library resumed after the last
    seq it saw)."""
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError as exc:
        _unavailable(f"Playwright for Python is not installed ({exc}); it is in the dev extra")
    console_built()
    cp = ControlPlaneProcess(tmp_path, tmp_path / "tether.db", extra=["--http-port", str(free_port()), "--console"])
    cp.start()
    try:
        start_worker(procs, cp.target, tmp_path / "w1", "w1")
        await workers_connected(cp.target)
        async with sdk.AsyncClient(cp.target) as client:
            session_id = (await client.create_session("shell")).session_id
        lines = [f"line-{i}" for i in range(1, 11)]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = await browser.new_page()
            logged: list[str] = []
            page.on("console", lambda m: logged.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: logged.append(f"page error: {e}"))
            expect.set_options(timeout=UI_TIMEOUT_MS)
            try:
                await page.goto(f"{http_base_url(cp)}/console/#/sessions/{session_id}")
                connection = page.get_by_test_id("connection")
                await page.get_by_test_id("input").fill("for i in $(seq 1 10); do echo line-$i; sleep 0.5; done")
                await page.get_by_test_id("send").click()
                transcript = page.get_by_test_id("transcript")
                await expect(transcript).to_contain_text("line-2")
                await expect(connection).to_have_text("live")
                cp.stop(signal.SIGKILL)  # a crash, mid-turn, while the page follows the stream
                await expect(connection).to_contain_text("reconnecting after seq")
                cp.start()  # the same ports and database
                await expect(connection).to_have_text("live")
                await expect(transcript).to_contain_text("turn completed (exit 0)")
                outputs = await transcript.locator(".entry-output").all_inner_texts()
                assert outputs == ["".join(f"{line}\n" for line in lines)], outputs
                seqs = [
                    int(s)
                    for s in await transcript.locator(".entry").evaluate_all("els => els.map(e => e.dataset.seq)")
                ]
                assert seqs == sorted(set(seqs)), seqs
            finally:
                await browser.close()
        # While it was down, only the connection attempts failed.
        assert all("net::ERR_" in m for m in logged), logged
        async with sdk.AsyncClient(cp.target) as client:
            [turn] = (await client.list_turns(session_id)).turns
            assert turn.state is sdk.TurnState.COMPLETED
    finally:
        cp.stop()


async def test_console_asks_for_the_key_and_keeps_it(chromium: str, tmp_path: pathlib.Path) -> None:
    """Without --dev: refused until a key is entered, then every call carries it as a bearer
    token; it is kept in sessionStorage across a reload and shows only the key owner's sessions."""
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError as exc:
        _unavailable(f"Playwright for Python is not installed ({exc}); it is in the dev extra")
    console_built()
    db = tmp_path / "keyed.db"
    cp = ControlPlaneProcess(tmp_path, db, extra=["--http-port", "0", "--console"], dev=False, migrate=True)
    cp.start()
    try:
        keys = {}
        for owner in ("alice", "bob"):
            made = subprocess.run(
                [sys.executable, "-m", "tether.cli", "keys", "create", "--owner", owner, "--db", str(db)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                timeout=60,
            )
            keys[owner] = made.stdout.strip()
        titles = {}
        for owner, key in keys.items():
            async with sdk.AsyncClient(cp.target, api_key=key) as client:
                session = await client.create_session("shell")
                await client.send_input(session.session_id, f"echo {owner}-was-here")
                titles[owner] = f"echo {owner}-was-here"

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = await browser.new_page()
            logged: list[str] = []
            page.on("console", lambda m: logged.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: logged.append(f"page error: {e}"))
            sent: list[str | None] = []
            page.on(
                "request",
                lambda r: sent.append(r.headers.get("authorization")) if "/tether.v1." in r.url else None,
            )
            expect.set_options(timeout=UI_TIMEOUT_MS)
            try:
                await page.goto(http_base_url(cp) + "/console/")
                await expect(page.get_by_test_id("key-state")).to_have_text("the key was refused: enter another")
                await expect(page.locator("#notice")).to_contain_text("Unauthenticated UNAUTHENTICATED")
                assert sent and all(a is None for a in sent), sent

                await page.get_by_test_id("api-key").fill(keys["alice"])
                await page.get_by_test_id("api-key").press("Enter")
                rows = page.get_by_test_id("sessions").locator("tbody tr")
                await expect(rows).to_have_count(1)
                await expect(rows.first).to_contain_text(titles["alice"])
                await expect(page.locator("#notice")).to_be_hidden()
                assert await page.evaluate("sessionStorage.getItem('tether.apiKey')") == keys["alice"]

                sent.clear()
                await page.reload()
                await expect(rows).to_have_count(1)
                await expect(rows.first).to_contain_text(titles["alice"])
                await expect(page.get_by_test_id("key-state")).to_have_text("key set")
                assert sent and all(a == f"Bearer {keys['alice']}" for a in sent), sent
            finally:
                await browser.close()
        # The only errors the browser logged are the refused calls before the key was entered.
        assert logged and all("status of 401" in m for m in logged), logged
    finally:
        cp.stop()


def test_browser_library(tmp_path: pathlib.Path) -> None:
    """web/client/test/*.test.ts, bundled for node by esbuild and run with `node --test`."""
    if not ESBUILD.exists():
        raise RuntimeError("esbuild is not installed: run `npm ci` (make test does it)")
    tests = sorted(str(p) for p in (WEB_DIR / "client" / "test").glob("*.test.ts"))
    assert tests, "no library tests found"
    out = tmp_path / "web-tests"
    build = [str(ESBUILD), *tests, "--bundle", "--platform=node", "--format=esm", f"--outdir={out}"]
    done = subprocess.run(
        [*build, "--out-extension:.js=.mjs", "--log-level=warning"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    ran = subprocess.run(["node", "--test", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    passed = re.search(r"^# pass (\d+)$", ran.stdout, re.M)
    assert passed and int(passed[1]) >= 14 and "# fail 0" in ran.stdout, ran.stdout
