"""The web page in a real browser: Debian's Chromium, headless, driven by Selenium, against the
real service (`ragtune serve`, the embedded engine, the real embedder). A person uploads a
document, asks about it, sees the answer stream in with a citation of that document, opens the
ledger, asks a follow-up, switches collection, and reads the API docs (all offline). `.ci/run` installs Chromium; where it is not
installed the test is skipped with that reason (never a silent pass)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.helpers import run_ragtune, serving

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NOTE = ("# Staff parking\n\nThe staff car park behind building C opens at 6:30 in the morning and closes at 22:00. "
        "Badges for the car park are issued by the facilities desk on the ground floor.\n")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        missing = "Chromium and chromedriver are not installed (apt install chromium chromium-driver; .ci/run does as root)"
        if os.environ.get("CI"):  # where .ci/run ran, the page must be tested
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 120, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out waiting in the page"
        time.sleep(every)
    return found


def test_upload_ask_follow_up_switch_collection_and_read_the_docs(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    corpus = tmp_path / "handbook"
    corpus.mkdir()
    (corpus / "welcome.md").write_text("# Welcome\n\nThe office kitchen is cleaned every Friday afternoon.\n")
    index = tmp_path / "index"
    assert run_ragtune("index", "add", str(corpus), "--index-dir", str(index)).returncode == 0
    (tmp_path / "parking.md").write_text(NOTE)
    env = dict(RAGTUNE_SERVICE__API_KEYS='["client-key"]', RAGTUNE_SERVICE__ADMIN_API_KEY="admin-key",
               RAGTUNE_INDEX__COLLECTIONS_DIR=str(tmp_path / "collections"), RAGTUNE_SERVICE__RELOAD_CHECK_SECONDS="0",
               RAGTUNE_GENERATION__MAX_ANSWER_TOKENS="40")
    with serving(index, tmp_path, **env) as server:
        find = browser.find_element
        browser.get(server.url)
        assert "ragtune" in browser.title
        find(By.CSS_SELECTOR, "#keys summary").click()
        find(By.ID, "client-key").send_keys("client-key")
        find(By.ID, "admin-key").send_keys("admin-key")
        find(By.ID, "save-keys").click()
        wait_for(lambda: Select(find(By.ID, "model")).options)

        # Upload into a new collection; the job reports, and the collection becomes the one asked.
        upload_to = find(By.ID, "upload-collection")
        upload_to.clear()
        upload_to.send_keys("facilities")
        find(By.ID, "files").send_keys(str(tmp_path / "parking.md"))
        find(By.CSS_SELECTOR, "#upload button").click()
        wait_for(lambda: find(By.ID, "job").text.startswith(("Done", "Upload failed")))
        assert find(By.ID, "job").text.startswith("Done: 1 added"), find(By.ID, "job").text
        assert Select(find(By.ID, "collection")).first_selected_option.get_attribute("value") == "facilities"
        assert "parking.md" in find(By.ID, "sources").text

        # Ask: the answer streams in (seen growing: every change of its text recorded as the page makes it; short
        # answers arrive in a few deltas, too fast to catch by polling), then its citations and ledger.
        browser.execute_script("""
            window.answerLengths = [];
            new MutationObserver(() => {
                const answers = document.querySelectorAll('.turn.assistant .answer');
                const text = answers.length ? answers[answers.length - 1].textContent : '';
                if (text) window.answerLengths.push(text.length);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});""")
        find(By.ID, "question").send_keys("When does the staff car park open?")
        find(By.ID, "send").click()

        def answered() -> bool:
            answers = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .answer")
            return find(By.ID, "send").is_enabled() and bool(answers) and bool(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .meta"))

        wait_for(answered, every=0.05)
        lengths = browser.execute_script("return window.answerLengths")
        assert len(set(lengths)) >= 2 and lengths[0] < lengths[-1], f"the answer did not stream in: lengths seen {lengths}"
        assistant = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[-1]
        assert "parking.md" in assistant.find_element(By.CSS_SELECTOR, "ol.citations").text
        assistant.find_element(By.CSS_SELECTOR, "details.ledger summary").click()
        ledger = assistant.find_element(By.CSS_SELECTOR, "details.ledger")
        assert ledger.get_attribute("open") is not None and "Collection facilities" in ledger.text and "Packed" in ledger.text
        screenshot = tmp_path / "page.png"
        browser.save_screenshot(str(screenshot))
        if os.environ.get("PAGE_SCREENSHOT"):  # how docs/page.png in the README was made
            shutil.copy(screenshot, os.environ["PAGE_SCREENSHOT"])

        # A follow-up is searched with the conversation.
        find(By.ID, "question").send_keys("And when does it close?")
        find(By.ID, "send").click()
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .meta")) == 2)
        follow_up = browser.find_elements(By.CSS_SELECTOR, ".turn.assistant")[-1]
        follow_up.find_element(By.CSS_SELECTOR, "details.ledger summary").click()
        assert "(prepended)" in follow_up.find_element(By.CSS_SELECTOR, "details.ledger").text

        # Another collection: a new conversation over the default one.
        Select(find(By.ID, "collection")).select_by_value("default")
        find(By.ID, "new-chat").click()
        find(By.ID, "question").send_keys("When is the office kitchen cleaned?")
        find(By.ID, "send").click()
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".turn.assistant .meta")) == 1)
        assert "welcome.md" in browser.find_element(By.CSS_SELECTOR, ".turn.assistant ol.citations").text
        # Script errors, none; (4xx answers the page handles, like a 401 before the key is set, are the network's.)
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
        assert errors == []

        # The API's docs: Swagger UI from the service's own files renders the operations, no CDN.
        browser.get(f"{server.url}/docs")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), timeout=30)
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "/v1/chat/completions" in text and "/ask" in text
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(server.url) for url in loaded), loaded
