"""`llmfab explore` end to end on the tiny LLaMA and sim-small: the local pool and Ray give the
same points, each point's figures are `llmfab report`'s, the Pareto flags follow their
definition, the best point's YAML compiles, a rerun comes from the cache, a crashed point is
recorded without stopping the sweep, and report.html shows points.json's numbers."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import sys

import pytest

from conftest import TINY
from llmfab import explore_point
from llmfab.cli import main
from test_report_html import CHROMIUM, _check_numbers, _chromium

SPACE = """prefill: 8
decode: 8
axes:
  engine.n_chains: [2, 4]
  clock_mhz: [100, 200]
  policy: [int8, w4-2of4]
  max_len: [16]
"""


def _explore(tmp_path, capsys, out: str, *extra: str, space: str = SPACE) -> tuple[int, dict, str, str]:
    (tmp_path / "space.yaml").write_text(space)
    code = main(["explore", str(TINY), "--target", "sim-small", "--space", str(tmp_path / "space.yaml"),
                 "-o", str(tmp_path / out), "--cache", str(tmp_path / "cache"), *extra])
    o = capsys.readouterr()
    points = json.loads((tmp_path / out / "points.json").read_text()) if code == 0 else {}
    return code, points, o.out, o.err


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One sweep with the local pool of 2 processes: (tmp folder, points.json dict, stdout)."""
    tmp = tmp_path_factory.mktemp("explore")
    (tmp / "space.yaml").write_text(SPACE)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["explore", str(TINY), "--target", "sim-small", "--space", str(tmp / "space.yaml"),
                     "-o", str(tmp / "local"), "--jobs", "2", "--cache", str(tmp / "cache")]) == 0
    return tmp, json.loads((tmp / "local" / "points.json").read_text()), buf.getvalue()


def test_every_point_is_timed_and_written(local_run):
    tmp, d, out = local_run
    assert d["counts"] == {"ok": 8, "does-not-fit": 0, "crashed": 0}
    ids = [p["id"] for p in d["points"]]
    assert len(set(ids)) == 8
    assert [p["params"] for p in d["points"]] == sorted(
        (p["params"] for p in d["points"]), key=lambda q: (q["engine.n_chains"], q["clock_mhz"], q["policy"]))
    for p in d["points"]:
        m = p["metrics"]
        assert m["tokens_per_s"] > 0 and m["ttft_s"] > 0 and m["power_w"] > 0 and m["j_per_token"] > 0
        assert m["dsp"] >= p["params"]["engine.n_chains"] * 4            # the engine's DSPs at least
    fast = {p["params"]["clock_mhz"]: p["metrics"]["tokens_per_s"] for p in d["points"]
            if p["params"]["engine.n_chains"] == 4 and p["params"]["policy"] == "int8"}
    assert fast[200] > fast[100]                                          # a faster clock decodes faster
    rows = list(csv.DictReader((tmp / "local" / "points.csv").open()))
    assert [r["id"] for r in rows] == ids
    assert [float(r["tokens_per_s"]) for r in rows] == [p["metrics"]["tokens_per_s"] for p in d["points"]]
    assert [r["pareto_dsp"] for r in rows] == [str(p["pareto_dsp"]).lower() for p in d["points"]]
    assert "explored 8 points" in out and "Pareto-optimal" in out


def test_pareto_flags_follow_the_definition(local_run):
    _, d, _ = local_run
    pts = [p for p in d["points"] if p["status"] == "ok"]
    for flag, cost in (("pareto_dsp", "dsp"), ("pareto_power", "power_w")):
        for p in pts:
            m = p["metrics"]
            beaten = any(q["metrics"]["tokens_per_s"] >= m["tokens_per_s"] and q["metrics"][cost] <= m[cost]
                         and (q["metrics"]["tokens_per_s"] > m["tokens_per_s"] or q["metrics"][cost] < m[cost])
                         for q in pts)
            assert p[flag] == (not beaten), (flag, p["id"])
    assert any(p["pareto_dsp"] for p in pts) and not all(p["pareto_dsp"] for p in pts)
    for p in pts:   # every point of a front has its target file, and only those
        assert ("yaml" in p) == (p["pareto_dsp"] or p["pareto_power"])


def test_a_point_is_what_llmfab_report_says(local_run, capsys):
    _, d, _ = local_run
    p = next(p for p in d["points"] if p["params"] == {"engine.n_chains": 2, "clock_mhz": 100, "max_len": 16,
                                                          "policy": "w4-2of4"})
    # sim-small has 2 chains at 100 MHz: this point is the bundled target; report compiles at L + N = 16
    assert main(["report", str(TINY), "--target", "sim-small", "--policy", "w4-2of4", "--prefill", "8",
                 "--decode", "8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    m = p["metrics"]
    assert m["tokens_per_s"] == pytest.approx(r["simulate"]["decode_tokens_per_s"], rel=1e-12)
    assert m["ttft_s"] == pytest.approx(r["simulate"]["ttft_s"], rel=1e-12)
    assert m["j_per_token"] == pytest.approx(r["power"]["joules_per_token"], rel=1e-12)
    assert m["dsp"] == r["resources"]["dsp"]["used"] and m["lut"] == r["resources"]["lut"]["used"]


def test_best_point_yaml_compiles(local_run, tmp_path, capsys):
    tmp, d, _ = local_run
    best = max((p for p in d["points"] if p.get("yaml")), key=lambda p: p["metrics"]["tokens_per_s"])
    yaml_path = tmp / "local" / best["yaml"]
    assert best["compile"].startswith(f"llmfab compile {TINY} --target {best['yaml']} --policy "
                                      f"{best['params']['policy']} --max-len 16")
    assert main(["compile", str(TINY), "--target", str(yaml_path), "--policy", best["params"]["policy"],
                 "--max-len", "16", "-o", str(tmp_path / "build")]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "build" / "manifest.json").read_text())
    assert manifest["target"]["name"] == f"sim-small-{best['id']}"
    assert (manifest["target"]["chains"], manifest["target"]["clock_mhz"]) == (
        best["params"]["engine.n_chains"], best["params"]["clock_mhz"])
    assert (tmp_path / "build" / "target.yaml").read_bytes() == yaml_path.read_bytes()


def test_report_page_shows_the_points(local_run):
    tmp, d, _ = local_run
    page = (tmp / "local" / "report.html").read_text()
    assert _check_numbers(d, page) >= 8 * 2        # every front and every point's figures, from points.json
    assert page.count("<svg") == 2 and "Decode tokens/s against DSPs" in page and "<script" not in page


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"needs {CHROMIUM}: apt-get install chromium (.ci/run does)")
def test_report_page_is_deterministic_and_renders(local_run, tmp_path):
    import matplotlib.image as mpimg

    from llmfab.explore_html import render_explore_html
    tmp, d, _ = local_run
    src = tmp / "local" / "report.html"
    assert render_explore_html(d) == src.read_text()         # the page is drawn from points.json alone
    shot = tmp_path / "shot.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1200,1600", src.as_uri()], tmp_path)
    assert shot.is_file(), (CHROMIUM, r.stderr[-2000:])
    img = (mpimg.imread(shot)[..., :3] * 255).astype(int)
    assert img.mean(axis=2).std() > 10                       # not a blank page
    orange = (abs(img[..., 0] - 0xe0) < 12) & (abs(img[..., 1] - 0x7b) < 12) & (abs(img[..., 2] - 0x39) < 12)
    assert orange.sum() > 200                                # the Pareto markers and staircases are drawn
    dom = _chromium(["--dump-dom", src.as_uri()], tmp_path).stdout
    assert dom.count("<svg") == 2 and "Decode tokens/s against power" in dom


def test_rerun_and_extended_space_come_from_the_cache(local_run, capsys):
    tmp, d, _ = local_run
    assert main(["explore", str(TINY), "--target", "sim-small", "--space", str(tmp / "space.yaml"),
                 "-o", str(tmp / "local"), "--jobs", "2", "--cache", str(tmp / "cache")]) == 0
    out = capsys.readouterr().out
    assert "(0 run in" in out and "8 from the cache" in out
    assert json.loads((tmp / "local" / "points.json").read_text()) == d
    (tmp / "wider.yaml").write_text(SPACE.replace("[100, 200]", "[100, 150, 200]"))
    assert main(["explore", str(TINY), "--target", "sim-small", "--space", str(tmp / "wider.yaml"),
                 "-o", str(tmp / "wider"), "--jobs", "1", "--cache", str(tmp / "cache")]) == 0
    out = capsys.readouterr().out
    assert "explored 12 points" in out and "(4 run in" in out and "8 from the cache" in out
    wider = json.loads((tmp / "wider" / "points.json").read_text())
    old = {p["id"]: p["metrics"] for p in d["points"]}
    assert all(p["metrics"] == old[p["id"]] for p in wider["points"] if p["id"] in old)


def test_a_crashing_point_is_recorded_and_the_sweep_goes_on(tmp_path, capsys, monkeypatch):
    real = explore_point.metrics

    def clock_200_crashes(task):
        if "clock_mhz: 200" in task.target_text:
            raise ZeroDivisionError("float division by zero")
        return real(task)
    monkeypatch.setattr(explore_point, "metrics", clock_200_crashes)   # --jobs 1 runs in this process
    code, d, out, _ = _explore(tmp_path, capsys, "out", "--jobs", "1")
    assert code == 0
    assert d["counts"] == {"ok": 4, "does-not-fit": 0, "crashed": 4}
    for p in d["points"]:
        crashed = p["params"]["clock_mhz"] == 200
        assert p["status"] == ("crashed" if crashed else "ok")
        assert (p.get("error") == "ZeroDivisionError: float division by zero") == crashed
        assert not (crashed and (p["pareto_dsp"] or p["pareto_power"]))
    assert out.count("crashed   ") == 4
    monkeypatch.setattr(explore_point, "metrics", real)
    code, d, out, _ = _explore(tmp_path, capsys, "out", "--jobs", "1")   # crashes are not cached: run again
    assert d["counts"]["ok"] == 8 and "(4 run in" in out and "4 from the cache" in out


def test_ray_missing_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)      # as if not installed: `import ray` raises ImportError
    code, _, out, err = _explore(tmp_path, capsys, "out", "--executor", "ray", "--no-cache")
    assert code == 2 and out == ""
    assert err == ("llmfab: error: --executor ray needs Ray: pip install 'llmfab[explore]' (or pip install ray)\n")
    assert not (tmp_path / "out").exists()


def test_ray_gives_the_same_points(local_run, tmp_path, capsys):
    """A local Ray of 2 CPUs started (and stopped) by the command; ~10 s, most of it Ray's start.
    The test extra installs Ray, so this runs wherever `make test` does (no skip)."""
    _, d, _ = local_run
    code, r, _, _ = _explore(tmp_path, capsys, "ray", "--executor", "ray", "--jobs", "2", "--no-cache")
    assert code == 0
    assert r["points"] == d["points"] and r["counts"] == d["counts"]
    import ray
    assert not ray.is_initialized()


def _dies_on_b(task):
    """A point runner whose process dies (no exception, no result) on point 'b'."""
    import os
    if task.id == "b":
        os._exit(3)
    return {"status": "ok", "metrics": {"tokens_per_s": len(task.id)}}


def test_a_dead_worker_process_is_found_and_the_pool_goes_on():
    from llmfab.explore_exec import run_local
    from llmfab.explore_point import Task
    tasks = [Task(pid, "m", "", "", "int8", 16, None, None, 8, 8) for pid in ("a", "b", "cc", "ddd", "e")]
    results = {}
    run_local(tasks, 2, lambda t, r: results.__setitem__(t.id, r), fn=_dies_on_b)
    assert results == {"a": {"status": "ok", "metrics": {"tokens_per_s": 1}},
                       "b": {"status": "crashed", "error": "the worker process died while running this point"},
                       "cc": {"status": "ok", "metrics": {"tokens_per_s": 2}},
                       "ddd": {"status": "ok", "metrics": {"tokens_per_s": 3}},
                       "e": {"status": "ok", "metrics": {"tokens_per_s": 1}}}
