"""Open a report's index.html in headless Chromium: fail on console errors, save a screenshot.

A report is meant to be opened by a person in a browser, so this checks it the way a browser sees it:
the page loads from file:// with no JavaScript error (Chromium logs console messages on stderr with
--enable-logging=stderr), every <img> loads and decodes (checked from a probe page, since headless
Chromium does not log a failed file:// image), the charts are embedded (inline SVG, or images with data:
URLs), and a screenshot is saved for a person to look at. tests/test_browser.py drives the interactive
parts (tooltips, sorting) through chromedriver.

    python benchmarks/render_check.py reports/resnet50-cpu/index.html --screenshot /tmp/resnet50.png

Exit status: 0 when the page renders cleanly, 1 when it does not, 2 when Chromium is missing.
Install it on Debian with: apt-get install -y chromium
"""
from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Console messages that mean the page is broken. Chromium logs console output as
# `...:CONSOLE(12)] "message", source: ...` (older) or `...:CONSOLE:12] "message", source: ...` (newer).
_CONSOLE = re.compile(r"CONSOLE[(:]\d*\)?\]?\s*\"(?P<message>.*?)\"(?:, source: (?P<source>\S+))?")
_BAD = re.compile(r"Uncaught|Error|Failed to load|net::ERR_|Refused to|Not allowed to load", re.IGNORECASE)

# Headless Chromium does not log a failed file:// image load, and cannot tell a corrupt embedded image
# from a good one. So a probe page loads the report in an iframe (same-origin for file:// only with
# --allow-file-access-from-files), waits for its load event (which waits for every image) and reports
# each image's decoded size; a broken one is also console.error'ed so it lands in the stderr log.
_PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<iframe id="page" src="{url}" style="width:1300px;height:900px"></iframe><pre id="result">PENDING</pre>
<script>
document.getElementById("page").addEventListener("load", () => {{
  const doc = document.getElementById("page").contentDocument;
  const lines = [];
  if (!doc) {{ lines.push("BROKEN the page could not be read"); }} else {{
    for (const img of doc.images) {{
      const what = (img.src.startsWith("data:") ? "embedded " : "linked ") + (img.alt || img.src.slice(0, 80));
      if (!img.complete || img.naturalWidth === 0) {{ lines.push("BROKEN image " + what); console.error("BROKEN image " + what); }}
      else {{ lines.push("IMAGE " + img.naturalWidth + "x" + img.naturalHeight + " " + what); }}
    }}
    for (const svg of doc.querySelectorAll("svg.chart")) {{
      const box = svg.getBoundingClientRect(), what = "embedded svg " + (svg.getAttribute("aria-label") || "chart");
      if (box.width === 0 || box.height === 0) {{ lines.push("BROKEN " + what); console.error("BROKEN " + what); }}
      else {{ lines.push("IMAGE " + Math.round(box.width) + "x" + Math.round(box.height) + " " + what); }}
    }}
  }}
  document.getElementById("result").textContent = lines.join("\\n") + "\\nDONE";
}});
</script></body></html>
"""
_QUIET = ["--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--no-default-browser-check", "--no-first-run", "--disable-extensions"]


@dataclass(frozen=True)
class RenderResult:
    """What Chromium reported for one page."""

    errors: list[str]
    images: list[str]  # "IMAGE <w>x<h> embedded|linked <alt>" per <img> or inline svg.chart, as the browser drew it
    screenshot: Path | None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def embedded_images(self) -> int:
        return sum(1 for line in self.images if " embedded " in line)


def find_browser() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _run(browser: str, url: str, extra: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    # A throwaway profile keeps runs independent; --no-sandbox because CI containers run as root.
    with tempfile.TemporaryDirectory(prefix="render-check-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *_QUIET,
                   "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *extra, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def console_errors(stderr: str) -> list[str]:
    """Console errors and failed loads among Chromium's stderr lines."""
    errors = []
    for line in stderr.splitlines():
        match = _CONSOLE.search(line)
        if match and _BAD.search(match.group("message")):
            source = f" ({match.group('source')})" if match.group("source") else ""
            errors.append(match.group("message") + source)
    return errors


def check(page: Path, screenshot: Path | None, *, width: int = 1300, height: int = 3600,
          timeout_s: float = 120.0) -> RenderResult:
    """Load `page` through the probe (console errors, every image decoded), then screenshot it."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found on PATH; install it with: apt-get install -y chromium")
    if not page.is_file():
        raise FileNotFoundError(f"no such page: {page}")
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="render-probe-") as directory:
        probe = Path(directory) / "probe.html"
        probe.write_text(_PROBE.format(url=html.escape(url, quote=True)), encoding="utf-8")
        dom = _run(browser, probe.as_uri(), ["--allow-file-access-from-files", "--dump-dom",
                                             "--virtual-time-budget=10000"], timeout_s)
    errors = [e for e in console_errors(dom.stderr) if not e.startswith("BROKEN")]  # listed below, once
    found = re.search(r'<pre id="result">(.*?)</pre>', dom.stdout, re.DOTALL)
    lines = html.unescape(found.group(1)).splitlines() if found else []
    if "DONE" not in lines:
        errors.append(f"the page did not finish loading (exit {dom.returncode}): {dom.stderr.strip()[-300:]}")
    errors += [line for line in lines if line.startswith("BROKEN") and line not in errors]
    shot: Path | None = None
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        run = _run(browser, url, [f"--screenshot={screenshot.resolve()}", f"--window-size={width},{height}"],
                   timeout_s)
        errors += [e for e in console_errors(run.stderr) if e not in errors]
        if screenshot.is_file() and screenshot.stat().st_size > 0:
            shot = screenshot
        else:
            errors.append(f"no screenshot written (exit {run.returncode}): {run.stderr.strip()[-300:]}")
    return RenderResult(errors, [line for line in lines if line.startswith("IMAGE")], shot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report's index.html")
    parser.add_argument("--screenshot", type=Path, default=Path(tempfile.gettempdir()) / "render_check.png",
                        help="where to save the screenshot (default: render_check.png in the temp dir, never the repo)")
    parser.add_argument("--min-images", type=int, default=1, help="fail with fewer embedded images (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per Chromium run (default 120)")
    args = parser.parse_args(argv)
    try:
        result = check(args.page, args.screenshot, timeout_s=args.timeout)
    except FileNotFoundError as error:
        print(f"render_check: {error}", file=sys.stderr)
        return 2
    problems = list(result.errors)
    if result.embedded_images < args.min_images:
        problems.append(f"{result.embedded_images} embedded images in the DOM, expected at least {args.min_images}")
    for problem in problems:
        print(f"render_check: error: {problem}", file=sys.stderr)
    for line in result.images:
        print(f"  {line}")
    print(f"{args.page}: {'FAILED' if problems else 'ok'}; {result.embedded_images} embedded images; "
          f"screenshot {result.screenshot or 'not written'}")
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("LANG", "C.UTF-8")
    sys.exit(main())
