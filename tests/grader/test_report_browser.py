"""report.html in a real browser: Debian's headless Chromium, driven by its bare flags.

Chromium loads the report from a file with a network log on (``--log-net-log``) and the console
on standard error; the tests assert that the page asked for nothing over the network and wrote no
console message, then read the DOM Chromium built (``--dump-dom``): a section per function, MathML
elements, plots whose data decode as PNG images. A screenshot is saved under
``$REPORT_SCREENSHOT_DIR`` when set (a CI artifact), else in the test's temporary folder.
A probe page that does fetch and log is run through the same checks, so that they are seen to fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from grader.render import render_html
from tests.grader.test_report import sample_notebook, sample_result

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")

#: Hosts Chromium itself calls on start (updates, time, accounts) whatever the page holds, even with
#: --disable-background-networking; every other http(s) request in the net log came from the page.
BROWSER_OWN_HOSTS = re.compile(r"^https?://([a-z0-9.-]+\.)?(google\.com|googleapis\.com|gstatic\.com|gvt1\.com)(:\d+)?(/|$)")
#: Seconds one Chromium run may take: ~2.5 s measured on 2 loaded cores; 60 leaves room for load.
CHROMIUM_SECONDS = 60


def chromium(page: Path, *flags: str) -> tuple[str, list[str], list[str]]:
    """Load ``page``; (stdout, the page's console lines, the http(s) URLs the page requested)."""
    with tempfile.TemporaryDirectory() as profile:
        net_log = Path(profile) / "net-log.json"
        run = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}/data",
             "--enable-logging=stderr", "--v=0", f"--log-net-log={net_log}", *flags, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=CHROMIUM_SECONDS)
        assert run.returncode == 0, run.stderr[-2000:]
        events = json.loads(net_log.read_text()).get("events", []) if net_log.exists() else []
    urls = {e.get("params", {}).get("url") for e in events}
    requested = sorted(u for u in urls if isinstance(u, str) and re.match(r"https?://", u)
                       and not BROWSER_OWN_HOSTS.match(u))
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return run.stdout, console, requested


class _Dom(HTMLParser):
    """The few things the tests read from Chromium's DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.functions: list[str] = []
        self.tags: dict[str, int] = {}
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "section" and "function" in (attributes.get("class") or "").split():
            self.functions.append(attributes.get("data-function", ""))
        if tag == "img":
            self.images.append(attributes.get("src") or "")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of a realistic result with the grader's real plots (a failing and a passing one)."""
    import torch

    from grader.checks.statistical import residual_plot

    g = torch.Generator().manual_seed(0)
    failing = residual_plot(1.3 * torch.randn(4096, generator=g) + 0.4, "q_sample: with noise=None …")
    passing = residual_plot(torch.randn(4096, generator=g), "q_step: iterated …")
    page = tmp_path_factory.mktemp("report") / "report.html"
    page.write_text(render_html(sample_result(failing, passing), sample_notebook()), encoding="utf-8")
    return page


def test_the_report_names_no_url_and_holds_no_script() -> None:
    """What the browser test checks at run time, checked in the text: fast, without a browser."""
    html = render_html(sample_result(), sample_notebook())
    assert not re.search(r"https?://|<script|\bon[a-z]+=|javascript:", html, re.I)
    assert re.findall(r'\b(?:src|href)="([^"#][^"]{0,20})', html) == ["data:image/png;base64"] * 2
    assert "default-src 'none'" in html  # and the page's own policy forbids any load but data: images


@needs_chromium
@pytest.mark.slow
def test_chromium_loads_the_report_without_network_console_or_script(report: Path) -> None:
    dom, console, requested = chromium(report, "--dump-dom")
    assert requested == [] and console == []
    parsed = _Dom()
    parsed.feed(dom)
    assert parsed.tags.get("script", 0) == 0


@needs_chromium
@pytest.mark.slow
def test_the_checks_see_a_page_that_fetches_and_logs(tmp_path: Path) -> None:
    """The same checks on a probe page fail: the net log and the console are really read."""
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/probe.png"><script>console.error("probe")</script>')
    _, console, requested = chromium(probe, "--dump-dom")
    assert requested == ["http://127.0.0.1:9/probe.png"] and any('"probe"' in line for line in console)


@needs_chromium
@pytest.mark.slow
def test_the_dom_chromium_built_has_the_report_structure(report: Path) -> None:
    from PIL import Image

    dom, _, _ = chromium(report, "--dump-dom")
    parsed = _Dom()
    parsed.feed(dom)
    assert parsed.functions == ["the notebook", "q_sample", "q_step", "q_posterior"]
    assert parsed.tags.get("math", 0) >= 5 and parsed.tags.get("mover", 0) >= 1 and parsed.tags.get("msub", 0) >= 3
    assert len(parsed.images) == 2
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        image.load()  # a full decode: a truncated or corrupt PNG raises here
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 100


@needs_chromium
@pytest.mark.slow
def test_a_screenshot_of_the_report(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = Path(os.environ.get("REPORT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "report.png"
    shot.unlink(missing_ok=True)
    chromium(report, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    image = Image.open(shot)
    image.load()
    assert image.size == (1200, 2400)
    assert sum(1 for count in image.convert("L").histogram() if count) > 20  # not a blank page
