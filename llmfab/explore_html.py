"""`llmfab explore`'s DIR/report.html: the Pareto plots and tables, drawn from the points.json
dict only (like report_html.py, whose page style, spans and plot helpers it uses): every number
is a span naming its path in points.json, so a test checks the page against the file."""
from __future__ import annotations

import html

from . import report_plots as plots
from .explore_point import CRASHED, OK
from .explore_space import AXES
from .report_html import CSS, Page, _section, _table

COLUMNS = (("tokens_per_s", "tok/s", ".1f", 1.0), ("ttft_s", "TTFT ms", ".1f", 1e3), ("dsp", "DSP", ",.0f", 1.0),
           ("lut", "LUT", ",.0f", 1.0), ("bram", "BRAM36", ",.0f", 1.0), ("uram", "URAM", ",.0f", 1.0),
           ("power_w", "W", ".1f", 1.0), ("j_per_token", "J/token", ".3f", 1.0))


def _short(axis: str) -> str:
    """A column head: `engine.n_chains` -> `n_chains`, `buffers.kv.bytes` -> `kv bytes`."""
    return axis.removeprefix("engine.").removeprefix("buffers.").replace(".bytes", " bytes")


def _points_table(p: Page, rows: list[tuple[int, dict]], axes: list[str]) -> str:
    head = ["point", *map(_short, axes), *(c[1] for c in COLUMNS), "front"]   # its target: best-<point>.yaml
    body = []
    for i, pt in rows:
        flags = ("DSP " if pt["pareto_dsp"] else "") + ("power" if pt["pareto_power"] else "")
        body.append([html.escape(pt["id"]), *(html.escape(str(pt["params"][k])) for k in axes),
                     *(p.n(f"points/{i}/metrics/{k}", fmt, scale) for k, _, fmt, scale in COLUMNS),
                     flags.strip() or "–"])
    return f"<div style='overflow-x:auto;white-space:nowrap'>{_table(head, body)}</div>"


def render_explore_html(d: dict) -> str:
    plots._mpl()
    p = Page(d)
    pts = list(enumerate(d["points"]))
    ok = [(i, q) for i, q in pts if q["status"] == OK]
    axes = [k for k in AXES if k in d["axes"]]   # the order points are sorted in (JSON sorts keys)
    figs = "".join(plots.pareto_plot([(q["metrics"][cost], q["metrics"]["tokens_per_s"], q[flag]) for _, q in ok],
                                     title, xlabel, salt)
                   for flag, cost, title, xlabel, salt in (
                       ("pareto_dsp", "dsp", "Decode tokens/s against DSPs", "DSP blocks", "pareto-dsp"),
                       ("pareto_power", "power_w", "Decode tokens/s against power", "W at a decode step",
                        "pareto-power")))
    c = d["counts"]
    cards = [(p.n("counts/ok", "d"), "points that fit"), (p.n("counts/does-not-fit", "d"), "do not fit"),
             (p.n("counts/crashed", "d"), "crashed")]
    if ok:
        i, fastest = max(ok, key=lambda iq: iq[1]["metrics"]["tokens_per_s"])
        cards.insert(0, (p.n(f"points/{i}/metrics/tokens_per_s", ".1f"), f"tokens/s at best ({fastest['id']})"))
    body = "<div class=cards>" + "".join(f"<div class=card><b>{v}</b><small>{k}</small></div>" for v, k in cards) + "</div>"
    front = sorted([(i, q) for i, q in ok if q["pareto_dsp"] or q["pareto_power"]],
                   key=lambda iq: -iq[1]["metrics"]["tokens_per_s"])
    body += _section("Pareto fronts", "Each point that fits, timed on the design timing model (decode tokens/s over "
                     f"{d['decode']} steps after a prompt of {d['prefill']}). A point is Pareto-optimal when no other "
                     "is at least as fast for no more DSPs (left) or no more watts (right) and better in one. "
                     "Each one's target is <code>best-&lt;point&gt;.yaml</code> beside this page.",
                     f"<div class=plots>{figs}</div>", _points_table(p, front, axes))
    body += _section("Every point that fits", f"{c[OK]} points, fastest first.",
                     "<details><summary>the table</summary>" + _points_table(
                         p, sorted(ok, key=lambda iq: -iq[1]["metrics"]["tokens_per_s"]), axes) + "</details>")
    bad = [(i, q) for i, q in pts if q["status"] != OK]
    if bad:
        body += _section("Points that do not fit or crashed", "Why each was refused, as compile, the target checks "
                         "or the worker said.", _table(["point", *map(_short, axes), "status", "why"], [
                             [html.escape(q["id"]), *(html.escape(str(q["params"][k])) for k in axes),
                              "crashed" if q["status"] == CRASHED else "does not fit", html.escape(q["error"])]
                             for i, q in bad]))
    title = f"Design space of {d['model']} on {d['target']}"
    sub = (f"llmfab explore · {len(d['points'])} points of {d['space']} · axes {', '.join(axes)} · "
           "timing: the pipelined design")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)} · llmfab</title><style>{CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(sub)}</p></header><main>{body}</main>"
            "<footer>Written by llmfab explore; every number is the one in points.json.</footer></body></html>\n")
