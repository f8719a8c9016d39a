"""The playground at `/`, in a real headless browser (Debian's chromium + Selenium)
against a live server: model list, a generation streamed token by token, speculative
decoding, seq2seq, the forecaster's plot, the regressor's numbers, a two-turn session,
no console errors. Saves screenshots under tests/artifacts/."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import LiveServer, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
MODELS = ["text-lm", "text-lm-draft", "sine-forecaster", "sine-regressor", "digits-seq2seq"]
WAIT_S = 60.0

if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(
        "the playground tests need Debian's chromium and chromedriver "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skip: only needed with chromium)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# SEVERE browser-console entries seen so far, with the test that caused them.
CONSOLE_ERRORS: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server(MODELS) as live:
        yield live


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        # The viewport itself at 1280x800 (a window of that size has less room inside).
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(server.url + "/")
        wait_for(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models"))
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def _console(browser: WebDriver, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for entry in browser.get_log("browser"):
        if entry["level"] == "SEVERE":
            CONSOLE_ERRORS.append((request.node.name, entry["message"]))


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = WAIT_S
) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def pick(driver: WebDriver, model: str) -> None:
    Select(by_id(driver, "model-select")).select_by_value(model)
    assert by_id(driver, "model-select").get_attribute("value") == model


def wait_state(driver: WebDriver, element_id: str, states: tuple[str, ...] = ("done",)) -> str:
    """Wait until the status chip leaves idle/streaming; fail unless it is in `states`."""
    state = wait_for(
        driver,
        lambda d: (
            (s := by_id(d, element_id).get_attribute("data-state")) not in ("idle", "streaming")
            and s
        ),
    )
    assert state in states, f"#{element_id} is {state!r}: {error_text(driver)}"
    return state


def error_text(driver: WebDriver) -> str:
    banner = by_id(driver, "error")
    return banner.text if banner.is_displayed() else "(no error shown)"


def type_into(driver: WebDriver, element_id: str, text: str) -> None:
    element = by_id(driver, element_id)
    element.clear()
    element.send_keys(text)


def number(text: str) -> float:
    value = float(text)
    assert math.isfinite(value)
    return value


def test_lists_every_model(browser: WebDriver) -> None:
    listed = [
        b.get_attribute("data-model")
        for b in browser.find_elements(By.CSS_SELECTOR, "#models button")
    ]
    options = [o.get_attribute("value") for o in Select(by_id(browser, "model-select")).options]
    assert sorted(listed) == sorted(MODELS)
    assert sorted(options) == sorted(MODELS)
    assert by_id(browser, "health").get_attribute("data-state") == "ready"
    assert browser.title == "kvserve playground"


def test_sse_parser_reassembles_split_chunks(browser: WebDriver) -> None:
    # The page's own parser (static/sse.js), fed a stream cut at awkward places:
    # inside a CR LF, inside a field name, with a comment and a two-line data field.
    script = r"""
    const done = arguments[arguments.length - 1];
    import("/static/sse.js").then(({ SseParser }) => {
      const parser = new SseParser();
      const chunks = [": keep-alive\r", "\n\nevent: token\r\ndata: {\"index\":0}\r",
                      "\n\r\nev", "ent: done\ndata: a\ndata: b\n", "\n"];
      done(chunks.flatMap((c) => parser.feed(c)));
    });
    """
    messages = browser.execute_async_script(script)
    assert messages == [
        {"event": "token", "data": '{"index":0}'},
        {"event": "done", "data": "a\nb"},
    ]


def test_generation_streams_token_by_token(browser: WebDriver) -> None:
    pick(browser, "text-lm")
    type_into(browser, "prompt", "import os\n\n\ndef main(")
    type_into(browser, "max-new-tokens", "200")
    type_into(browser, "temperature", "0")
    by_id(browser, "generate").click()
    seen: list[str] = []  # the output's distinct texts while the stream is running
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text, state = browser.execute_script(
            "return [document.getElementById('output').textContent,"
            " document.getElementById('gen-status').dataset.state]"
        )
        if state != "streaming":
            break
        if text and (not seen or seen[-1] != text):
            seen.append(text)
    assert state == "done", f"generation ended {state!r}: {error_text(browser)}"
    final = by_id(browser, "output").get_attribute("textContent")
    growing = [t for t in seen if t != final]
    assert len(set(growing)) >= 3, f"saw only {len(set(growing))} partial outputs: {growing}"
    assert all(final.startswith(t) for t in growing), "the output must only grow"
    assert number(by_id(browser, "ttft").text) > 0
    assert number(by_id(browser, "tps").text) > 0
    assert int(by_id(browser, "token-count").text) == 200
    assert by_id(browser, "finish-reason").text == "length"
    assert "completion 200" in by_id(browser, "usage").text


def test_speculative_generation_shows_acceptance(browser: WebDriver) -> None:
    pick(browser, "text-lm")
    checkbox = by_id(browser, "speculative")
    if not checkbox.is_selected():
        checkbox.click()
    assert Select(by_id(browser, "draft-select")).first_selected_option.text == "text-lm-draft"
    type_into(browser, "max-new-tokens", "48")
    by_id(browser, "generate").click()
    wait_state(browser, "gen-status")
    assert by_id(browser, "spec-box").is_displayed()
    assert "accepted" in by_id(browser, "spec-stats").text
    assert by_id(browser, "output").text
    checkbox.click()  # back to plain generation for the tests after this one
    assert not checkbox.is_selected()


def test_seq2seq_shows_digits(browser: WebDriver) -> None:
    pick(browser, "digits-seq2seq")
    type_into(browser, "source", "1234")
    by_id(browser, "seq2seq-run").click()
    wait_state(browser, "seq2seq-status")
    shown = by_id(browser, "seq2seq-output").text
    # The task: the reversal, the card's separator shown as "=", the digit sum.
    assert shown.startswith("4321="), shown
    assert shown[5:].isdigit(), shown


def test_forecaster_plot_is_drawn(browser: WebDriver) -> None:
    pick(browser, "sine-forecaster")
    by_id(browser, "example-input").click()
    type_into(browser, "forecast-steps", "32")
    by_id(browser, "run-values").click()
    wait_state(browser, "values-status")
    context = browser.find_element(By.CSS_SELECTOR, "#plot .context polyline")
    forecast = browser.find_element(By.CSS_SELECTOR, "#plot .forecast polyline")
    assert len(context.get_attribute("points").split()) == 96
    # The forecast's line starts at the context's last point.
    assert len(forecast.get_attribute("points").split()) == 32 + 1
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground-forecaster.png"))


def test_regression_shows_numbers(browser: WebDriver) -> None:
    pick(browser, "sine-regressor")
    by_id(browser, "example-input").click()
    by_id(browser, "run-values").click()
    wait_state(browser, "values-status")
    cells = browser.find_elements(By.CSS_SELECTOR, "#prediction dd[data-value]")
    amplitude, frequency, phase = (number(c.get_attribute("data-value")) for c in cells)
    truth = browser.find_elements(By.CSS_SELECTOR, "#prediction dd.truth-note")
    true_a, true_f, _ = (number(t.text.removeprefix("true ")) for t in truth)
    # The example is drawn like the training data; the card reports RMSE 0.02 (A), 0.005 (f).
    assert abs(amplitude - true_a) < 0.3
    assert abs(frequency - true_f) < 0.03
    assert math.isfinite(phase)
    assert browser.find_elements(By.CSS_SELECTOR, "#plot .forecast polyline")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground-regressor.png"))


def test_session_turns_reuse_the_cache(browser: WebDriver) -> None:
    pick(browser, "text-lm")
    by_id(browser, "session-open").click()
    wait_for(browser, lambda d: by_id(d, "session-state").get_attribute("data-state") == "open")
    assert by_id(browser, "session-id").text.startswith("sess_")
    cached = []
    for prompt in ("class Stack:\n", "    def push(self, item):\n"):
        type_into(browser, "session-prompt", prompt)
        by_id(browser, "session-send").click()
        turns = len(cached) + 1
        wait_for(browser, lambda d: answered(d) == turns)  # noqa: B023 (called in the loop)
        cached.append(int(by_id(browser, "session-cached").text))
    replies = browser.find_elements(By.CSS_SELECTOR, "#transcript .turn.reply")
    assert [int(r.get_attribute("data-cached")) for r in replies] == cached
    assert cached[0] == 0
    assert cached[1] > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "#transcript .turn.user")) == 2


def answered(driver: WebDriver) -> int:
    """Session replies that have finished (they carry their cached-token count)."""
    return len(driver.find_elements(By.CSS_SELECTOR, "#transcript .turn.reply[data-cached]"))


def test_screenshot_and_no_console_errors(browser: WebDriver) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "playground.png"
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    by_id(browser, "session-close").click()
    wait_for(browser, lambda d: by_id(d, "session-state").get_attribute("data-state") == "closed")
    CONSOLE_ERRORS.extend(
        ("test_screenshot_and_no_console_errors", e["message"])
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE"
    )
    assert CONSOLE_ERRORS == []


def test_api_key_is_sent_and_kept(browser: WebDriver) -> None:
    with live_server(["sine-regressor"], env={"KVSERVE_API_KEYS": "playground-key"}) as keyed:
        for path in ("/", "/static/app.js"):
            try:
                urllib.request.urlopen(keyed.url + path, timeout=10).close()
            except urllib.error.HTTPError as exc:
                pytest.fail(f"GET {path} without a key: {exc.code}")
        browser.get(keyed.url + "/")
        body = browser.find_element(By.TAG_NAME, "body")
        wait_for(browser, lambda d: body.get_attribute("data-models") == "0")
        assert "API key" in error_text(browser)
        type_into(browser, "api-key", "playground-key")
        by_id(browser, "api-key-save").click()
        wait_for(browser, lambda d: body.get_attribute("data-models") == "1")
        assert not by_id(browser, "error").is_displayed()
        browser.refresh()  # the key stays for the tab (sessionStorage)
        wait_for(
            browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models")
        )
        assert by_id(browser, "api-key").get_attribute("value") == "playground-key"
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-models") == "1"
        # The first model list was refused (401) before the key was entered: expected.
        unexpected = [
            e["message"]
            for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "401" not in e["message"]
        ]
        assert unexpected == []
