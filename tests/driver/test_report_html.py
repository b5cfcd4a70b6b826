"""`llmfab report/simulate --html`: the page's numbers are the --json ones, the page is
self-contained and deterministic, it renders in headless Chromium, and without matplotlib the
default path still works while --html says what to install."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import TINY
from llmfab.cli import main

CHROMIUM = "/usr/bin/chromium"
SPAN = re.compile(r'<span data-json="([^"]*)" data-scale="([^"]*)" data-fmt="([^"]*)">([^<]*)</span>')
REPORT = [str(TINY), "--target", "u280", "--policy", "w4-2of4", "--prefill", "16", "--decode", "16"]


def _run(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """(the --json dict, the page) of one `llmfab report --json --html` run."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["report", *REPORT, "--json", "--html", str(out)]) == 0
    return json.loads(buf.getvalue()), out.read_text()


def _get(d, path: str):
    for k in path.split("/"):
        d = d[int(k)] if isinstance(d, list) else d[k]
    return d


def _check_numbers(d: dict, page: str) -> int:
    """Every tagged number of the page equals the value at its path in the --json dict."""
    spans = SPAN.findall(page)
    for path, scale, fmt, text in spans:
        v = _get(d, html.unescape(path))
        scale = float(scale)
        want = "–" if v is None else format(v if scale == 1 else v * scale, html.unescape(fmt))
        assert html.unescape(text) == want, (path, text, want)
    return len(spans)


def test_report_page_numbers_are_the_json_ones(report_page):
    d, page = report_page
    n = _check_numbers(d, page)
    assert n > 100                                    # every table is tagged, not a handful of numbers
    # the headline figures are among them, at the paths --json prints
    paths = {html.unescape(p) for p, *_ in SPAN.findall(page)}
    assert {"simulate/decode_tokens_per_s", "simulate/ttft_s", "power/joules_per_token", "storage/bytes_bucketed",
            "storage/bytes_per_exact_length", "resources/dsp/used", "weight_formats/0/bits_per_weight"} <= paths
    assert f"{d['simulate']['decode_tokens_per_s']:.1f}" in page


def test_report_json_has_what_the_page_draws(report_page):
    d, _ = report_page
    sim = d["simulate"]
    assert d["kind"] == "report" and d["fits"] is True
    # decode is timed over the whole context the report analyses, TTFT at every chunk end
    assert [int(c) for c in sim["curves"]["decode_s_per_token"]][0] == 1
    assert max(int(c) for c in sim["curves"]["decode_s_per_token"]) == d["decode_context"]
    assert list(sim["curves"]["ttft_s"]) == list(d["bounds"]["ttft_s"])
    ttft = list(sim["curves"]["ttft_s"].values())
    assert ttft == sorted(ttft) and ttft[0] == pytest.approx(sim["ttft_s"])   # prompt of 16 = the first chunk
    # no schedule beats the roofline bound
    for c, s in sim["curves"]["decode_s_per_token"].items():
        assert s >= d["bounds"]["decode_s_per_token"][c]
    assert d["storage"]["bytes_per_exact_length"] > d["storage"]["bytes_bucketed"] > 0
    roles = {w["role"] for w in d["weight_formats"]}
    assert {"q_proj", "down_proj", "lm_head"} <= roles
    sparse = [w for w in d["weight_formats"] if w["sparsity"] == "2:4"]
    assert sparse and all(w["bits"] == 4 and w["bits_per_weight"] < 4 for w in sparse)


def test_report_page_is_self_contained(report_page):
    _, page = report_page
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and "<img" not in page
    # nothing to fetch: every reference is to an element of the page or inline data (namespaces are names)
    assert not re.search(r'(?:src|href)\s*=\s*"(?!#|data:)', page)
    assert "url(http" not in page and "@import" not in page
    # roofline, units, 2 x functions, 2 x layers, 2 x decode curves, TTFT, resources, storage, bits
    assert page.count("<svg") == 12
    for title in ("Roofline", "Where the time goes", "Decode speed against context", "Time to first token",
                  "Resources against the device", "Instruction storage", "Bits of every layer"):
        assert f"<h2>{title}" in page


def test_report_page_is_deterministic(report_page, tmp_path):
    from llmfab.report_html import render_html
    d, page = report_page
    assert render_html(d) == page
    out = tmp_path / "again.html"
    assert main(["report", *REPORT, "--html", str(out)]) == 0
    assert out.read_text() == page


def test_simulate_page_numbers_are_the_json_ones(tmp_path, capsys):
    build, out = tmp_path / "b", tmp_path / "sim.html"
    assert main(["compile", str(TINY), "--target", "u280", "--max-len", "48", "--policy", "int4-g128", "-o", str(build)]) == 0
    capsys.readouterr()
    code, text, err = _run(capsys, ["simulate", str(build), "--prefill", "8", "--decode", "8", "--json",
                                    "--html", str(out)])
    assert code == 0 and err == f"wrote {out}\n"
    d, page = json.loads(text), out.read_text()
    assert d["kind"] == "simulate" and d["policy"] == "int4-g128"
    assert _check_numbers(d, page) > 60
    assert all(w["bits"] == 4 and w["group"] for w in d["weight_formats"] if w["role"] != "embedding")
    assert "A build holds no graph" in page and page.count("<svg") == 12


def test_html_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib -> ImportError
    code, text, _ = _run(capsys, ["report", *REPORT, "--json"])  # the default path needs no matplotlib
    assert code == 0 and json.loads(text)["fits"] is True
    out = tmp_path / "r.html"
    code, _, err = _run(capsys, ["report", *REPORT, "--html", str(out)])
    assert code == 2
    assert re.fullmatch(r"llmfab: error: --html needs matplotlib: pip install 'llmfab\[report\]' "
                        r"\(or pip install 'matplotlib>=3\.8,<4'\)\n", err)
    assert not out.exists()


def _chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"needs {CHROMIUM}: apt-get install chromium")
def test_page_renders_in_headless_chromium(report_page, tmp_path):
    import matplotlib.image as mpimg

    _, page = report_page
    src = tmp_path / "report.html"
    src.write_text(page)
    shot = tmp_path / "shot.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1200,3000", src.as_uri()], tmp_path)
    assert shot.is_file(), r.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (3000, 1200)
    gray = img.mean(axis=2)
    assert gray.std() > 0.05                                 # not a blank page
    # the header band is dark, the plots draw ink on white cards
    assert gray[:60].mean() < 0.4 and (gray < 0.5).mean() > 0.01
    colours = {tuple(c) for c in (img[::7, ::7] * 255).astype(int).reshape(-1, 3)}
    assert len(colours) > 50                                 # the plots' colours, not text alone
    dom = _chromium(["--dump-dom", src.as_uri()], tmp_path).stdout
    assert dom.count("<svg") == 12
    assert len(re.findall(r"<(?:path|use)\b", dom)) > 200    # the plots' marks are in the DOM
    assert "Decode speed against context" in dom
