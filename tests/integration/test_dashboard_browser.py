"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real station server on
127.0.0.1 (uvicorn, the real SQLite store, a real drift monitor; tests/integration/_dash_serve.py).

Every request the page makes to anything but 127.0.0.1 is aborted and recorded: the page must load and work
with none. Checked: live decisions appear (and a new one within a few polls); an alarm's frame is reached in at
most two clicks; a feedback click reaches the store; a write without the token is refused (and one from another
origin even with it); a hostile recipe name renders as text and runs nothing. Screenshots go to a temporary
folder, and to docs/img/ with LINEGUARD_DOCS_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.unit._dash_station import cone_frame, synth_recipe
from tests.unit._edge_bundles import make_toy_bundle

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (make install installs it)", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
TOKEN = "browser-token-" + "x" * 30
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = '<img src=x onerror=alert(1)>'
RECIPES = ("vanilla_sprinkles", "chocolate_nuts", HOSTILE)


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[str]
    store: Path
    lines: list[str] = field(default_factory=list)

    def push(self, image: Any, recipe: str) -> dict[str, Any]:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        r = httpx.post(f"{self.url}/v1/predict", params={"recipe": recipe}, content=buf.getvalue(),
                       headers={**AUTH, "Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())


def _start(tmp: Path) -> Served:
    bundle = make_toy_bundle(tmp / "toy", recipes=RECIPES,
                             decision={"default_threshold": 0.45, "per_recipe": {"vanilla_sprinkles": 0.4},
                                       "temperature": 2.0})
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    store = tmp / "edge.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration._dash_serve", "--bundle", str(bundle), "--store", str(store),
         "--token-file", str(token_file), "--monitor", "cones"],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].split()[0]
            threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
            return Served(url, proc, store, lines)
    proc.kill()
    raise AssertionError("the dashboard station did not start:\n" + "".join(lines))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = _start(tmp_path_factory.mktemp("dash-browser"))
    try:
        for i in range(60):  # a clean stream on the two plain recipes
            recipe = RECIPES[i % 2]
            s.push(cone_frame(i, recipe), recipe)
        for i in range(60, 120):  # then a dirty lens: the monitor must alarm
            recipe = RECIPES[i % 2]
            s.push(cone_frame(i, recipe, drift="dirty-lens", severity=0.9), recipe)
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.proc.wait(15)
            except subprocess.TimeoutExpired:
                s.proc.kill()


@dataclass
class Page:
    page: Any
    outside: list[str]
    errors: list[str]
    dialogs: list[str]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def open_page(browser: Any, served: Served) -> Iterator[Any]:
    contexts = []

    def _open(path: str = "/", base: str | None = None, width: int = 1280, height: int = 860) -> Page:
        ctx = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        contexts.append(ctx)
        outside: list[str] = []
        errors: list[str] = []
        dialogs: list[str] = []

        def route(r: Any) -> None:
            if urlsplit(r.request.url).hostname in ("127.0.0.1", "localhost"):
                r.continue_()
            else:  # the station is offline: nothing may come from elsewhere
                outside.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)

        def on_dialog(d: Any) -> None:
            dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", on_dialog)
        page.goto((base or served.url) + path)
        page.wait_for_selector("#live-list li", timeout=20_000)
        return Page(page, outside, errors, dialogs)

    yield _open
    for ctx in contexts:
        ctx.close()


def shot(page: Any, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=False)
    if os.environ.get("LINEGUARD_DOCS_SCREENSHOTS") == "1":
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(REPO / "docs" / "img" / name), full_page=False)


def login(p: Page) -> None:
    p.page.click("#login-button")
    p.page.fill("#login-token", TOKEN)
    p.page.click("#login-submit")
    p.page.wait_for_selector("#login-button:text('Log out')")


def test_offline_page_shows_live_decisions_and_every_panel(open_page: Any, served: Served, tmp_path: Path) -> None:
    p = open_page()
    page = p.page
    cards = page.locator("#live-list li")
    assert cards.count() == 24  # the newest 24 of 120
    newest = int(cards.first.get_attribute("data-id") or 0)
    assert newest == 120
    assert page.locator("#live-list li.reject").count() >= 1
    thumbs = page.locator("#live-list li img")
    assert thumbs.count() >= 1
    page.wait_for_function("() => [...document.querySelectorAll('#live-list img')].every(i => i.complete && i.naturalWidth > 0)")
    page.wait_for_selector("#tiles .tile")
    assert page.locator("#station-name").text_content() == "line1"
    assert "toy" in (page.locator("#model-line").text_content() or "")
    shot(page, "dashboard-overview.png", tmp_path)
    # a new decision appears without a reload (polled with after_id)
    rec = served.push(cone_frame(500, "chocolate_nuts"), "chocolate_nuts")
    page.wait_for_selector("#live-list li[data-id='121']", timeout=15_000)
    assert rec["recipe"] == "chocolate_nuts"
    # every panel renders from the summary and health
    page.click("[data-tab=quality]")
    page.wait_for_selector("#chart-recipe svg")
    assert page.locator("#chart-hist svg path.ref").count() == 1  # the bundle's reference histogram
    assert page.locator("#kpi table").count() == 3
    shot(page, "dashboard-quality.png", tmp_path)
    page.click("[data-tab=health]")
    page.wait_for_selector("#h-disk dd")
    assert page.locator("#health-pill").text_content() == "healthy"
    page.click("[data-tab=drift]")
    page.wait_for_selector("#signals svg")
    assert page.locator("#signals svg line.threshold").count() >= 1
    shot(page, "dashboard-drift.png", tmp_path)
    assert p.outside == [] and p.errors == [] and p.dialogs == []


def test_an_alarms_frame_is_at_most_two_clicks_away(open_page: Any) -> None:
    p = open_page()
    page = p.page
    # the drift alarm: the banner's button (one click) opens the frame behind it
    page.wait_for_selector("#alarm-banner:not(.hidden)", timeout=15_000)
    assert "Drift alarm" in (page.locator("#alarm-text").text_content() or "")
    page.click("#alarm-frame-button")  # click 1
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("() => document.getElementById('detail-img').complete && document.getElementById('detail-img').naturalWidth > 0")
    assert "Frame #" in (page.locator("#detail-title").text_content() or "")
    page.click("#detail [data-close]")
    # or through the drift tab's alarm list (two clicks)
    page.click("[data-tab=drift]")  # click 1
    page.locator("#alarm-list li.active button").first.click()  # click 2
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("() => document.getElementById('detail-img').naturalWidth > 0")
    page.click("#detail [data-close]")
    # a reject on the live view: one click
    page.click("[data-tab=live]")
    page.locator("#live-list li.reject button").first.click()
    page.wait_for_selector("#detail[open]")
    assert "REJECT" in (page.locator("#detail-title").text_content() or "")
    assert p.outside == [] and p.errors == []


def test_a_feedback_click_reaches_the_store(open_page: Any, served: Served, tmp_path: Path) -> None:
    p = open_page()
    page = p.page
    login(p)
    page.click("[data-tab=feedback]")
    page.wait_for_selector("#review:not(.hidden)")
    caption = page.locator("#review-caption").text_content() or ""
    pid = int(caption.split("·")[0].strip().lstrip("#"))
    shot(page, "dashboard-feedback.png", tmp_path)
    page.click("#fb-bad")
    page.wait_for_selector(f"#fb-status:text('Saved: frame #{pid} is bad.')")
    with sqlite3.connect(f"file:{served.store}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT prediction_id, label, source FROM feedback WHERE prediction_id = ?", (pid,)).fetchall()
    assert rows == [(pid, "bad", "operator")]
    # the next frame is up for review, and the labelled one has left the queue
    page.wait_for_function(f"() => !document.getElementById('review-caption').textContent.startsWith('#{pid} ')")
    assert page.locator(f"#fb-queue li[data-id='{pid}']").count() == 0
    assert p.outside == [] and p.errors == []


def test_a_write_without_the_token_is_refused(open_page: Any, served: Served, browser: Any) -> None:
    p = open_page()
    page = p.page
    before = httpx.get(f"{served.url}/v1/recipe").json()["recipe"]
    # the page asks for the token instead of sending the write
    page.click("#recipe-button")
    page.wait_for_selector("#recipes[open] .recipe-choice")
    page.locator("#recipes .recipe-choice").first.click()
    page.wait_for_selector("#login[open]")
    page.fill("#login-token", "not-the-token-but-long-enough")
    page.click("#login-submit")
    page.wait_for_selector("#login-status:text('This token is not the station')")
    page.click("#login [data-close]")
    # the same write sent by hand from the page: refused without the token and with a wrong one
    statuses = page.evaluate("""async () => {
        const body = JSON.stringify({recipe: 'chocolate_nuts'});
        const a = await fetch('/v1/recipe', {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
        const b = await fetch('/v1/recipe', {method: 'POST', headers: {'Content-Type': 'application/json',
                                             Authorization: 'Bearer wrong-token-wrong-token'}, body});
        const c = await fetch('/v1/feedback', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                               body: JSON.stringify({prediction_id: 1, label: 'good'})});
        return [a.status, (await a.json()).reason, b.status, c.status];
    }""")
    assert statuses == [401, "unauthorized", 401, 401]
    # another origin (localhost is not 127.0.0.1 to a browser) cannot write even when it holds the token
    other = open_page(base=served.url.replace("127.0.0.1", "localhost"))
    result = other.page.evaluate("""async (args) => {
        try {
            const r = await fetch(args.url + '/v1/recipe', {method: 'POST', body: JSON.stringify({recipe: 'chocolate_nuts'}),
                headers: {'Content-Type': 'application/json', Authorization: 'Bearer ' + args.token}});
            return 'status ' + r.status;
        } catch (e) { return 'blocked'; }
    }""", {"url": served.url, "token": TOKEN})
    assert result in ("blocked", "status 403")
    with sqlite3.connect(f"file:{served.store}?mode=ro", uri=True) as con:
        assert con.execute("SELECT COUNT(*) FROM feedback WHERE prediction_id = 1").fetchone()[0] == 0
    assert httpx.get(f"{served.url}/v1/recipe").json()["recipe"] == before
    assert p.outside == [] and other.outside == []


def test_a_hostile_recipe_name_renders_as_text(open_page: Any, served: Served) -> None:
    r = httpx.post(f"{served.url}/v1/recipe", json={"recipe": HOSTILE}, headers=AUTH)
    assert r.status_code == 200, r.text
    for i in range(3):
        served.push(cone_frame(600 + i, synth_recipe(HOSTILE)), HOSTILE)
    p = open_page()
    page = p.page
    page.wait_for_selector("#recipe-name")
    page.wait_for_function("(h) => document.getElementById('recipe-name').textContent === h", arg=HOSTILE)
    assert page.locator("#live-list li .recipe", has_text=HOSTILE).count() >= 3
    page.click("[data-tab=quality]")
    page.wait_for_selector("#chart-recipe svg text")
    assert page.locator("#chart-recipe svg text", has_text=HOSTILE).count() == 1
    assert page.locator("#kpi td", has_text=HOSTILE).count() >= 1
    page.click("#recipe-button")
    page.wait_for_selector("#recipes[open] .recipe-choice.current")
    assert page.locator("#recipes .recipe-choice.current").text_content() == HOSTILE
    page.wait_for_timeout(500)
    assert page.locator("img[src='x']").count() == 0  # no element was made from the name
    assert p.dialogs == [] and p.errors == [] and p.outside == []
    httpx.post(f"{served.url}/v1/recipe", json={"recipe": None}, headers=AUTH)


def test_lineguard_serve_over_a_folder_with_a_hostile_file_name(browser: Any, tmp_path: Path) -> None:
    """The page over the real `lineguard serve` (store, runtime, folder source): a file named like markup shows
    as text in the frame's detail, nothing runs, and a feedback tap lands in the real store."""
    import io
    import json

    from PIL import Image

    bundle = make_toy_bundle(tmp_path / "toy", recipes=("vanilla_sprinkles", "chocolate_nuts"))
    frames = tmp_path / "frames"
    frames.mkdir()
    names = [f"cone-{i:02d}.png" for i in range(8)] + [f"{HOSTILE}.png"]
    for i, name in enumerate(names):
        buf = io.BytesIO()
        Image.fromarray(cone_frame(700 + i, "vanilla_sprinkles")).save(buf, format="PNG")
        (frames / name).write_bytes(buf.getvalue())
    store = tmp_path / "store" / "line1.db"
    config = tmp_path / "station.yaml"
    config.write_text(json.dumps({"station": "line1", "recipe": "vanilla_sprinkles", "store": {"path": str(store),
                                  "sampling": {"pass_share": 1.0}}}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", "serve", "--bundle", str(bundle), "--config",
                             str(config), "--source", str(frames), "--port", "0", "--token-file", str(token_file)],
                            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on " in line:
                url = line.split("listening on ", 1)[1].split()[0]
        assert url, "lineguard serve did not start:\n" + "".join(lines)
        threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + 60
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(rows) < len(names):
            rows = httpx.get(f"{url}/v1/predictions").json()["items"]
            time.sleep(0.3)
        assert len(rows) == len(names), "".join(lines)
        hostile = next(r for r in rows if HOSTILE in r["source"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 860})
        outside: list[str] = []
        dialogs: list[str] = []
        ctx.route("**/*", lambda r: r.continue_() if urlsplit(r.request.url).hostname == "127.0.0.1"
                  else (outside.append(r.request.url), r.abort()))
        page = ctx.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url + "/")
        page.wait_for_selector(f"#live-list li[data-id='{hostile['id']}']", timeout=20_000)
        page.click(f"#live-list li[data-id='{hostile['id']}'] button")
        page.wait_for_selector("#detail[open]")
        page.wait_for_function("(h) => document.getElementById('detail-fields').textContent.includes(h)", arg=HOSTILE)
        assert page.locator("img[src='x']").count() == 0
        page.click("#detail-bad")  # not logged in: the login opens, and the feedback is sent after it
        page.wait_for_selector("#login[open]")
        page.fill("#login-token", TOKEN)
        page.click("#login-submit")
        page.wait_for_selector("#detail-status:text('Saved')")
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as con:
            assert con.execute("SELECT label FROM feedback WHERE prediction_id = ?", (hostile["id"],)).fetchall() == [("bad",)]
        assert dialogs == [] and outside == []
        ctx.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
