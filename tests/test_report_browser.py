"""End to end: the generated report in headless Chromium (selenium + chromedriver).

Builds the report from tests/data/report (with a baseline, plots and an explore summary), checks the matrix, a filter,
the search box, a drill-down and its plots (uPlot canvases drawn from the embedded numbers), tooltips,
that markup in results stays text (no script runs), and saves reports/screenshot.png. Skips with the reason when Chromium, chromedriver or selenium is absent;
CI installs them (Debian: ``apt-get install -y chromium chromium-driver``; ``pip install selenium``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bnconform.report import write_report

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "report"
XSS_CASE = "<script>window.__pwned=1</script>"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).exists()), None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1440,900", "--force-device-scale-factor=1")


def _skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not CHROMIUM:
        return "Chromium is not installed (apt-get install -y chromium chromium-driver)"
    if not DRIVER:
        return "chromedriver is not installed (apt-get install -y chromium-driver)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=f"browser test: {_skip_reason()}")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = tmp_path_factory.mktemp("report") / "parity.html"
    write_report([DATA / "current"], out, baseline=[DATA / "baseline"], explored=[DATA / "explore"])
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument("--user-data-dir=" + str(tmp_path_factory.mktemp("chromium-profile")))
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        driver.get(out.as_uri())
        yield driver
    finally:
        driver.quit()


def _visible_cases(driver, table="m-theme"):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr.case'))"
        ".filter(function (tr) { return !tr.hidden; }).map(function (tr) { return tr.dataset.case; });", table)


def _plot_series(driver):
    """{plot container id: its number of drawn series (uPlot's, without x)} of the open drill-down."""
    return driver.execute_script(
        "var out = {}; document.querySelectorAll('#drill .plot').forEach(function (p) {"
        " if (p.querySelector('.uplot canvas')) out[p.id] = +p.getAttribute('data-series'); }); return out;")


#: How many pixels of a canvas are not transparent.
_INKED = ("var c = arguments[0], px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;"
          "for (var k = 3; k < px.length; k += 4) if (px[k]) n++; return n;")


def _cell_index(driver, case_id, adapter):
    return driver.execute_script(
        "var D = JSON.parse(document.getElementById('bn-data').textContent), key = {};"
        "for (var k in D.field_names) key[D.field_names[k]] = k;"  # the JSON's short keys of cell fields
        "for (var i = 0; i < D.cells.length; i++) { var c = D.cells[i];"
        " if (D.cases[c[key.case]].id === arguments[0] && D.adapters[c[key.adapter]].name === arguments[1]) return i; }",
        case_id, adapter)


def _severe_console_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def test_report_in_chromium(page):
    from selenium.webdriver.common.by import By

    d = page
    assert d.title == "bnconform parity report"
    assert _severe_console_errors(d) == []
    # matrix: 6 cases (5 + the markup one) x 3 adapters, verdict colours, all shown
    assert sorted(_visible_cases(d)) == sorted(["ema-3steps", "eval-uses-running", "fp16-train", "nhwc-train",
                                                XSS_CASE])
    cells = d.find_elements(By.CSS_SELECTOR, "#m-theme td.c[data-i]")
    assert len(cells) == 12
    assert {c.get_attribute("data-v") for c in cells} == {"conforms", "quirk", "known_bug", "fails", "unsupported",
                                                         "error"}
    assert d.find_element(By.ID, "f-status").text == "showing 5 of 5 cases"
    header = d.find_element(By.TAG_NAME, "header").text
    assert "fw_x 1.0" in header and "fw_y 2.3" in header and "3.11.7" in header and "2 newly failing" in header

    # markup in a case id, title, source and error message is text: no script ran, no element was made
    assert d.execute_script("return window.__pwned === undefined")
    ids = [th.text for th in d.find_elements(By.CSS_SELECTOR, "#m-theme tr.case th.case")]
    assert XSS_CASE + " new" in ids, ids  # a new case against the baseline
    assert d.execute_script("return document.querySelector('img[src=\"x\"]') === null && !Array.from("
                            "document.querySelectorAll('b')).some(function (b) { return b.textContent === 'bold?'; })")

    # filter: only what is not fine -> rows with only conforms/unsupported cells disappear
    for v in ("conforms", "unsupported"):
        d.find_element(By.CSS_SELECTOR, f'.f-verdict[value="{v}"]').click()
    assert sorted(_visible_cases(d)) == sorted(["ema-3steps", "fp16-train", XSS_CASE])
    assert d.find_element(By.ID, "f-status").text == "showing 3 of 5 cases"
    dimmed = d.find_elements(By.CSS_SELECTOR, "#m-theme tr.case:not([hidden]) td.c.dim")
    assert dimmed and all(c.get_attribute("data-v") in ("conforms", "unsupported") for c in dimmed)
    # framework filter hides the other framework's columns
    from selenium.webdriver.support.ui import Select
    Select(d.find_element(By.ID, "f-framework")).select_by_value("fw_y")
    assert sorted(_visible_cases(d)) == sorted(["ema-3steps", "fp16-train", XSS_CASE])
    assert all(not c.is_displayed() for c in d.find_elements(By.CSS_SELECTOR, '#m-theme td.c[data-fw="fw_x"]'))
    d.find_element(By.ID, "f-reset").click()
    # search by case id
    box = d.find_element(By.ID, "f-search")
    box.send_keys("ema")
    assert _visible_cases(d) == ["ema-3steps"]
    box.clear()
    box.send_keys("\b")
    d.find_element(By.ID, "f-reset").click()
    assert d.find_element(By.ID, "f-status").text == "showing 5 of 5 cases"
    # only what changed against the baseline (changed verdicts, a new cell, a new case)
    d.find_element(By.ID, "f-changed").click()
    assert sorted(_visible_cases(d)) == sorted(["ema-3steps", "eval-uses-running", "fp16-train", XSS_CASE])
    # tag filter
    Select(d.find_element(By.ID, "f-tag")).select_by_value("layout")
    assert _visible_cases(d) == []
    d.find_element(By.ID, "f-changed").click()
    assert _visible_cases(d) == ["nhwc-train"]
    d.find_element(By.ID, "f-reset").click()

    # drill-down: the error cell of the markup case shows the message as text
    d.find_element(By.CSS_SELECTOR, '#m-theme tr.case td.c[data-v="error"][data-fw="fw_y"]').click()
    drill = d.find_element(By.ID, "drill")
    assert drill.is_displayed()
    assert XSS_CASE in d.find_element(By.CSS_SELECTOR, "#drill h2").text
    assert "</script><script>window.__pwned=5</script>" in d.find_element(By.CSS_SELECTOR, "#drill pre.reason").text
    assert d.find_elements(By.CSS_SELECTOR, "#drill a[href^='javascript']") == []
    assert d.execute_script("return window.__pwned === undefined")

    # drill-down of a quirk cell: errors vs tolerance, the divergence and its source, plot, rerun command
    d.find_element(By.CSS_SELECTOR, '#m-theme tr.case[data-case="ema-3steps"] td.c[data-v="quirk"]').click()
    text = drill.text
    assert "ema-3steps" in text and "quirk" in text and "fw_y.BN" in text
    assert "Baseline: conforms" in text
    assert "quirk biased-running-var" in text and "running_var_correction=\"biased\"" in text
    assert "https://example.org/fw_y/batchnorm.py" in text
    assert "headroom" in text and "running_var" in text and "2 forward(train)" in text
    assert 'tox -e fw_y -- "cases/training.yaml::ema-3steps[fw_y.BN]"' in text
    assert "000_seed.txt" in text
    # plots drawn from the embedded numbers: one uPlot canvas each, sized, with pixels drawn, and the
    # series the data implies: running_var = canonical oracle, the oracle with fw_y.BN's divergence and
    # fw_y.BN's values, 2 channels each; running_mean: its divergent oracle is the canonical one (left out)
    assert _plot_series(d) == {"plot-running_mean": 4, "plot-running_var": 6, "plot-ratio": 3 + 2}
    for canvas in d.find_elements(By.CSS_SELECTOR, "#drill .plot canvas"):
        assert canvas.size["width"] > 250 and canvas.size["height"] > 100
        assert d.execute_script(_INKED, canvas) > 200, "blank plot"
    assert "oracle with fw_y.BN's divergences" in d.find_element(By.ID, "plot-running_var").text
    assert "tolerance (≤ 1 passes)" in d.find_element(By.ID, "plot-ratio").text
    # every adapter of the case: + fw_x's two adapters' values (2 channels each)
    d.find_element(By.ID, "plot-all").click()
    assert _plot_series(d) == {"plot-running_mean": 8, "plot-running_var": 10, "plot-ratio": 5}
    d.find_element(By.ID, "plot-all").click()
    assert _plot_series(d)["plot-running_var"] == 6
    # the tooltip comes from the data when the pointer reaches the cell
    from selenium.webdriver.common.action_chains import ActionChains
    quirk_td = d.find_element(By.CSS_SELECTOR, '#m-theme tr.case[data-case="ema-3steps"] td.c[data-v="quirk"]')
    ActionChains(d).move_to_element(quirk_td).perform()
    assert quirk_td.get_attribute("title") == "ema-3steps on fw_y.BN: quirk (was conforms)"
    # the comparison rows read by field name: against the canonical oracle (collapsed) running_var fails
    assert d.execute_script("return document.querySelectorAll('#drill details table.cmp tr.bad').length") == 3
    assert "duration\n0.01 s" in text and "framework\nfw_y 2.3" in text

    # a conflicting cell lists the other shard's record; a cell new against the baseline says so
    d.find_element(By.CSS_SELECTOR, '#m-theme tr.case[data-case="nhwc-train"] td.c.conflict').click()
    assert "Conflict: this cell was also reported by another shard" in drill.text
    assert "conflict: conforms (env fw_x, 1.0, darwin-arm64)" in drill.text
    # an unsupported cell: its reason (an entry of its adapter's reason table), the time (seconds after its
    # run's t0) and the rerun command with the node id the page composes
    assert "Why unsupported\nfw_x.BatchNorm has no channels-last layout" in drill.text
    assert "run at\n2026-01-02T03:04:05+00:00" in drill.text
    assert 'tox -e fw_x -- "cases/layouts.yaml::nhwc-train[fw_x.BatchNorm]"' in drill.text
    functional = d.find_element(By.CSS_SELECTOR, '#m-theme tr.case[data-case="eval-uses-running"] td.c[data-i="%d"]'
                                % _cell_index(d, "eval-uses-running", "fw_x.functional"))
    functional.click()
    assert functional.get_attribute("title") == "eval-uses-running on fw_x.functional: conforms"
    assert "New cell: not in the baseline." in drill.text and "fw_x.functional" in drill.text
    assert _severe_console_errors(d) == []

    # the other views render; the by-source matrix's rows are copies of the theme matrix's
    d.find_element(By.CSS_SELECTOR, '#tabs button[data-view="source"]').click()
    cells_of = ("return Array.from(document.querySelectorAll(arguments[0] + ' tr.case')).map(function (tr) {"
                " return tr.dataset.case + ':' + Array.from(tr.querySelectorAll('td')).map(function (td) {"
                " return (td.dataset.i || '-') + td.className.replace(/ (sel|dim)/g, '') + td.textContent; }).join(); });")
    theme_rows = dict(r.split(":", 1) for r in d.execute_script(cells_of, "#m-theme"))
    source_rows = d.execute_script(cells_of, "#m-source")
    assert len(source_rows) >= 5 and all(theme_rows[r.split(":", 1)[0]] == r.split(":", 1)[1] for r in source_rows)
    assert len(d.find_elements(By.CSS_SELECTOR, "#m-source td.c[data-i]")) >= 12
    d.find_element(By.CSS_SELECTOR, '#m-source tr.case[data-case="ema-3steps"] td.c[data-v="quirk"]').click()
    assert "quirk biased-running-var" in drill.text
    d.find_element(By.CSS_SELECTOR, '#tabs button[data-view="question"]').click()
    q = d.find_element(By.ID, "q-table").text
    assert "Forum: BN running variance differs between frameworks [000_seed.txt]" in q
    # a question cell's tooltip (each case's verdict on that adapter) comes from the data
    seed_q = d.find_element(By.CSS_SELECTOR, '#q-table tbody tr td.q.v-quirk')
    ActionChains(d).move_to_element(seed_q).perform()
    assert seed_q.get_attribute("title") == "ema-3steps: quirk"
    assert seed_q.get_attribute("data-fw") == "fw_y"
    d.find_element(By.CSS_SELECTOR, '#tabs button[data-view="diff"]').click()
    assert "Changed cells (3)" in d.find_element(By.ID, "view-diff").text
    # the Explored view: per adapter, generated cases run and undocumented divergences, the minimal cases
    d.find_element(By.CSS_SELECTOR, '#tabs button[data-view="explored"]').click()
    explored = d.find_element(By.ID, "view-explored")
    assert explored.is_displayed() and not d.find_element(By.ID, "toolbar").is_displayed()
    assert "fw_x.BatchNorm 1.0 1 60 2" in d.find_element(By.ID, "explored-adapters").text
    assert "explored-s0-fw_x-batchnorm-1 fw_x.BatchNorm fails" in explored.text
    assert "<img src=x onerror=window.__pwned=7>" in explored.text and d.execute_script("return window.__pwned === undefined")
    d.find_element(By.CSS_SELECTOR, '#tabs button[data-view="theme"]').click()

    # screenshot for humans: the matrix with the quirk cell's drill-down open
    d.find_element(By.CSS_SELECTOR, '#m-theme tr.case[data-case="ema-3steps"] td.c[data-v="quirk"]').click()
    d.execute_script("window.scrollTo(0, 0); var h = Array.from(document.querySelectorAll('#drill h3'))"
                     ".filter(function (h) { return /^Documented/.test(h.textContent); })[0];"
                     "document.getElementById('drill').scrollTop = h.offsetTop - 8;")
    shot = ROOT / "reports" / "screenshot.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert d.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
