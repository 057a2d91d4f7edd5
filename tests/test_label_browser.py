"""The labelling page in a real browser: headless Chromium (the system's) driven by Selenium.

Skipped when Chromium or ChromeDriver is missing, unless ``MMALIGN_REQUIRE_BROWSER=1`` (CI sets it), which
makes a missing browser a failure."""

from __future__ import annotations

import json
import os

import pytest

from diffusion_align.label_browser import find_browser
from diffusion_align.label_store import synthetic_folder

if find_browser() is None:
    if os.environ.get("MMALIGN_REQUIRE_BROWSER") == "1":
        raise RuntimeError("MMALIGN_REQUIRE_BROWSER=1 but no Chromium/ChromeDriver on PATH (apt-get install chromium "
                           "chromium-driver)")
    pytest.skip("no Chromium/ChromeDriver on PATH", allow_module_level=True)

pytestmark = pytest.mark.slow
N_GROUPS, K = 25, 3


@pytest.fixture
def folder(tmp_path):
    return synthetic_folder(tmp_path / "labels", N_GROUPS, K)


@pytest.fixture
def server(folder):
    from diffusion_align.label_server import BackgroundServer

    with BackgroundServer(folder) as url:
        yield url


@pytest.fixture
def browser(tmp_path):
    from diffusion_align.label_browser import headless_chromium

    drivers = []

    def make():
        d = headless_chromium(tmp_path / f"profile{len(drivers)}")
        d.set_page_load_timeout(30)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.quit()


def labels(folder, name):
    path = folder / f"labels_{name}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def wait_for(driver, condition, timeout=10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def text(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def on_group(driver, g):
    """Wait until the page shows group ``g`` (0-based)."""
    wait_for(driver, lambda d: text(d, "groupno") == f"group {g + 1}")


def start(driver, page, name):
    """Open ``page`` (the page's full address), type the annotator's name and start."""
    from selenium.webdriver.common.by import By

    driver.get(page)
    box = driver.find_element(By.ID, "annotator")
    box.clear()
    box.send_keys(name)
    driver.find_element(By.ID, "start").click()


def press(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def test_label_by_keyboard_and_clicks_reload_and_undo(server, folder, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser()
    start(d, server + "/", "kb")
    on_group(d, 0)
    assert text(d, "prompt") == "synthetic group 0" and text(d, "progress") == "0 / 25 groups labelled"
    expected = []
    # ten groups by keyboard: a best image, a tie, a broken image then the best, a ranking
    for g in range(10):
        on_group(d, g)
        kind = g % 4
        if kind == 0:
            press(d, str(g % K + 1))
            expected.append([1 if i == g % K else 0 for i in range(K)])
        elif kind == 1:
            press(d, "t")
            expected.append([0] * K)
        elif kind == 2:
            ActionChains(d).key_down(Keys.SHIFT).send_keys("1").key_up(Keys.SHIFT).perform()  # image 1 is broken
            wait_for(d, lambda d: d.find_element(By.ID, "broken0").is_selected())
            press(d, "3")
            expected.append([-1, 0, 1])
        else:
            press(d, "r")
            press(d, "2")
            press(d, "3")
            press(d, "1")
            expected.append([1, 3, 2])
        wait_for(d, lambda d, n=g + 1: len(labels(folder, "kb")) == n)
    on_group(d, 10)
    assert text(d, "progress") == "10 / 25 groups labelled"
    assert [r["scores"] for r in labels(folder, "kb")] == expected
    # a reload continues where the annotator stopped
    d.refresh()
    on_group(d, 10)
    assert text(d, "progress") == "10 / 25 groups labelled"
    # ten groups by clicks: an image, the tie button, a broken box then an image
    for g in range(10, 20):
        on_group(d, g)
        kind = g % 3
        if kind == 0:
            d.find_element(By.ID, "img1").click()
            expected.append([0, 1, 0])
        elif kind == 1:
            d.find_element(By.ID, "tie").click()
            expected.append([0] * K)
        else:
            d.find_element(By.ID, "broken2").click()
            d.find_element(By.ID, "img0").click()
            expected.append([1, 0, -1])
        wait_for(d, lambda d, n=g + 1: len(labels(folder, "kb")) == n)
    assert [r["scores"] for r in labels(folder, "kb")] == expected
    assert [r["group"] for r in labels(folder, "kb")] == list(range(20))
    # undo (key u, then the button) takes back the last two labels and shows their groups
    press(d, "u")
    on_group(d, 19)
    d.find_element(By.ID, "undo").click()
    on_group(d, 18)
    wait_for(d, lambda d: len(labels(folder, "kb")) == 18)
    # a changed mind on an earlier group replaces its label (one vote), arrows move between groups
    press(d, Keys.ARROW_LEFT)
    on_group(d, 17)
    press(d, "2")  # its broken mark (image 3) stays
    wait_for(d, lambda d: labels(folder, "kb")[-1] == {"group": 17, "scores": [0, 1, -1]})
    assert len(labels(folder, "kb")) == 18 and [r["group"] for r in labels(folder, "kb")].count(17) == 1
    on_group(d, 18)  # the next unlabelled group


def test_undo_right_after_a_pick_waits_for_its_save(server, folder, browser):
    d = browser()
    start(d, server + "/", "fast")
    on_group(d, 0)
    # the tie and the undo key in one script: the key comes while the tie's save is surely in flight
    d.execute_script('document.getElementById("tie").click();'
                     'document.dispatchEvent(new KeyboardEvent("keydown", {key: "u"}));')
    wait_for(d, lambda _: (folder / "labels_fast.jsonl").is_file())
    on_group(d, 0)
    wait_for(d, lambda _: labels(folder, "fast") == [])
    assert text(d, "progress") == "0 / 25 groups labelled"


def test_two_annotators_in_two_sessions(server, folder, browser):
    a, b = browser(), browser()
    start(a, server + "/", "ann")
    start(b, server + "/", "bea")
    for g in range(5):
        on_group(a, g)
        on_group(b, g)
        press(a, "1")
        press(b, "2")
        wait_for(a, lambda _, n=g + 1: len(labels(folder, "ann")) == n and len(labels(folder, "bea")) == n)
    assert [r["scores"] for r in labels(folder, "ann")] == [[1, 0, 0]] * 5
    assert [r["scores"] for r in labels(folder, "bea")] == [[0, 1, 0]] * 5
    a.get(server + "/summary")
    assert "ann" in text(a, "annotators") and "bea" in text(a, "agreement")


def test_token_traversal_and_malformed_body_refused(folder, browser):
    from diffusion_align.label_server import BackgroundServer

    d = browser()
    with BackgroundServer(folder, token="tok123") as url:
        d.get(url + "/")
        assert "token is required" in d.page_source
        d.get(url + "/?token=wrong")
        assert "token is required" in d.page_source
        start(d, url + "/?token=tok123", "t")  # the address the server printed ...
        on_group(d, 0)
        assert "token" not in d.current_url  # ... then the cookie carries the token
        press(d, "1")
        wait_for(d, lambda _: len(labels(folder, "t")) == 1)
        d.get(url + "/images/%2e%2e/groups.jsonl")
        assert "no such image" in d.page_source or "Not Found" in d.page_source
        status = d.execute_async_script(
            "const done = arguments[0]; fetch('/api/label', {method: 'POST', body: '{broken'})"
            ".then(async (r) => done([r.status, (await r.json()).error]));")
        assert status[0] == 400 and "not JSON" in status[1]
    assert len(labels(folder, "t")) == 1
