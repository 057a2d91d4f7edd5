"""The labelling page under a scripted browser: response time per label and per page load, and the
server's memory, on a synthetic folder of 5,000 groups.

    python benchmarks/label_page.py [--groups 5000] [--labels 200] [--loads 30] [--shots labels/]

The server runs as its own process (``python -m diffusion_align.label serve``), so its memory is its own;
headless Chromium (the system's, driven by Selenium) labels ``--labels`` groups by keyboard, first with an
empty labels file and then with one that already holds ``--groups - --labels`` labels (each label rewrites
the annotator's file, so this is the worst case), and reloads the page ``--loads`` times. Times are the
browser's own Resource and Navigation Timing entries (request start to response end, on loopback).

With ``--shots FOLDER`` (a folder written by ``label sample``) it also saves screenshots of the page's main
states to ``docs/img/label_*.png`` (``--shots-only``: nothing else).

Writes ``benchmarks/results/label_page.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from diffusion_align.label_browser import headless_chromium
from diffusion_align.label_store import import_reference, read_groups, synthetic_folder

RESULTS = Path(__file__).parent / "results"
DOCS_IMG = Path(__file__).parents[1] / "docs" / "img"
WORK = Path("outputs/label_bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_align.label", "serve", "--dir", str(folder),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stdout.read()}") from None
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def memory_mb(pid: int) -> dict:
    """Resident memory now and at its peak (``VmRSS``, ``VmHWM``), MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(status[v].split()[0]) / 1024 for k, v in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


def stats(ms: list[float]) -> dict:
    return {"n": len(ms), "median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(np.max(ms))}


def wait_group(driver, g: int, timeout: float = 30) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.005).until(
        lambda d: d.execute_script("return document.body.dataset.group") == str(g))


def label_run(driver, url: str, annotator: str, n: int, k: int, seed: int) -> list[float]:
    """Label ``n`` groups by keyboard; the browser's timing of each ``POST /api/label`` (ms)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        return d.execute_script("return document.body.dataset.group")

    driver.get(f"{url}/?annotator={annotator}")
    WebDriverWait(driver, 30).until(shown)
    driver.execute_script("performance.setResourceTimingBufferSize(100000); performance.clearResourceTimings();")
    rng = random.Random(seed)
    for _ in range(n):
        g = shown(driver)
        ActionChains(driver).send_keys(str(rng.randrange(k) + 1)).perform()
        WebDriverWait(driver, 30, poll_frequency=0.005).until(lambda d, g=g: shown(d) != g)
    entries = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/label'))"
        ".map(e => e.responseEnd - e.startTime)")
    return [float(x) for x in entries]


def load_run(driver, url: str, annotator: str, n: int) -> tuple[list[float], list[float]]:
    """Reload the page ``n`` times: the HTML's navigation time, and the time until the group's data and
    images are in (ms from navigation start)."""
    html, ready = [], []
    for _ in range(n):
        driver.get(f"{url}/?annotator={annotator}")
        g = None
        for _ in range(3000):
            g = driver.execute_script("return document.body.dataset.group")
            if g is not None and driver.execute_script(
                    "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"):
                break
            time.sleep(0.005)
        nav = driver.execute_script("const e = performance.getEntriesByType('navigation')[0];"
                                    "return [e.responseEnd - e.startTime, Math.max(...performance"
                                    ".getEntriesByType('resource').map(r => r.responseEnd))]")
        html.append(float(nav[0]))
        ready.append(float(nav[1]))
    return html, ready


def screenshots(folder: Path, profile: Path) -> list[str]:
    """The page's main states on a real label folder, saved to ``docs/img/``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    work = Path(tempfile.mkdtemp())
    shot = work / "labels"
    shutil.copytree(folder, shot, ignore=shutil.ignore_patterns("labels*.jsonl"))
    proc, url = start_server(shot)
    d = headless_chromium(profile, 1280, 760)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    saved = []

    def save(name):
        path = DOCS_IMG / f"label_{name}.png"
        d.save_screenshot(str(path))
        saved.append(str(path))

    try:
        d.get(url + "/")
        d.find_element(By.ID, "annotator").send_keys("alice")
        d.find_element(By.ID, "start").click()
        wait_group(d, 0)
        save("group")
        ActionChains(d).send_keys("2").perform()
        wait_group(d, 1)
        ActionChains(d).key_down(Keys.SHIFT).send_keys("4").key_up(Keys.SHIFT).perform()
        ActionChains(d).send_keys("r", "3").perform()
        time.sleep(0.3)
        save("ranking")
        ActionChains(d).send_keys("1", "2").perform()
        wait_group(d, 2)
        ActionChains(d).send_keys(Keys.ARROW_LEFT).perform()
        wait_group(d, 1)
        time.sleep(0.3)
        save("labelled")
        ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
        n = len(read_groups(shot))
        for g in range(2, n):
            wait_group(d, g)
            ActionChains(d).send_keys(str(g % 3 + 1)).perform()
        time.sleep(0.5)
        save("done")
        for g in range(n):  # a second annotator, so that the summary shows an agreement
            req = urllib.request.Request(url + "/api/label", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"annotator": "bob", "group": g, "best": g % 2}).encode())
            urllib.request.urlopen(req, timeout=10).read()
        d.get(url + "/summary")
        save("summary")
    finally:
        d.quit()
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return saved


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, default=5000)
    p.add_argument("--per-group", type=int, default=4)
    p.add_argument("--labels", type=int, default=200)
    p.add_argument("--loads", type=int, default=30)
    p.add_argument("--shots", default=None, help="a label folder to take the docs' screenshots on")
    p.add_argument("--shots-only", action="store_true", help="only the screenshots (with --shots)")
    args = p.parse_args(argv)
    if args.shots_only:
        if not args.shots:
            p.error("--shots-only needs --shots FOLDER")
        return {"screenshots": screenshots(Path(args.shots), Path(tempfile.mkdtemp()) / "p")}
    folder = WORK / f"synthetic_{args.groups}x{args.per_group}"
    if not (folder / "pairs.jsonl").is_file():
        t = time.perf_counter()
        synthetic_folder(folder, args.groups, args.per_group)
        print(f"wrote {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    for f in folder.glob("labels*.jsonl"):
        f.unlink()
    # an annotator who has labelled all but the last --labels groups: each new label rewrites a long file
    rng = random.Random(1)
    prior = args.groups - args.labels - 1  # one group stays unlabelled, so every label moves the page on
    import_reference(folder, "late", [[rng.choice([0, 1, -1]) for _ in range(args.per_group)] for _ in range(prior)])
    proc, url = start_server(folder)
    profile = Path(tempfile.mkdtemp())
    d = headless_chromium(profile / "p")
    res: dict = {"groups": args.groups, "per_group": args.per_group, "labels": args.labels, "loads": args.loads}
    try:
        res["memory_start"] = memory_mb(proc.pid)
        res["label_empty_file"] = stats(label_run(d, url, "early", args.labels, args.per_group, 0))
        res["label_long_file"] = stats(label_run(d, url, "late", args.labels, args.per_group, 1))
        res["label_long_file"]["prior_labels"] = prior
        html, ready = load_run(d, url, "early", args.loads)
        res["page_load_html"], res["page_load_ready"] = stats(html), stats(ready)
        res["memory_end"] = memory_mb(proc.pid)
    finally:
        d.quit()
        proc.terminate()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    lines = (folder / "labels_late.jsonl").read_text().splitlines()
    assert len(lines) == prior + args.labels, "the late annotator's file must hold each labelled group once"
    res["labels_file_kb"] = os.path.getsize(folder / "labels_late.jsonl") / 1024
    if args.shots:
        res["screenshots"] = screenshots(Path(args.shots), Path(tempfile.mkdtemp()) / "p")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "label_page.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "label_page.md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    def row(name, s):
        return f"| {name} | {s['n']} | {s['median_ms']:.1f} | {s['p95_ms']:.1f} | {s['max_ms']:.1f} |"

    return "\n".join([
        f"# The labelling page under a scripted browser ({res['groups']} groups × {res['per_group']} images)", "",
        "Headless Chromium labels by keyboard; times from the browser's Resource/Navigation Timing, on loopback, "
        "2 cores.", "",
        "| request | n | median (ms) | 95th percentile (ms) | max (ms) |", "|---|---|---|---|---|",
        row("label, empty labels file", res["label_empty_file"]),
        row(f"label, file already holding {res['label_long_file']['prior_labels']} labels", res["label_long_file"]),
        row("page load: the HTML", res["page_load_html"]),
        row("page load: group data and images in", res["page_load_ready"]), "",
        f"Server memory: {res['memory_start']['rss_mb']:.0f} MiB resident at start, "
        f"{res['memory_end']['rss_mb']:.0f} MiB after the run (peak {res['memory_end']['peak_mb']:.0f} MiB). "
        f"The long labels file ({res['label_long_file']['prior_labels'] + res['labels']} groups): "
        f"{res['labels_file_kb']:.0f} KiB.", ""])


if __name__ == "__main__":
    main()
