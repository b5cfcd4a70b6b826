"""`--html OUT.html`: one self-contained page (inline SVG plots, inline CSS, no script, no
network) drawn from the dict `--json` prints (llmfab/report.py), never from a second computation.

Every number in a table is a `<span data-json="a/b/c" data-scale="1e3" data-fmt=".2f">` of the
value at that path, so a test (tests/driver/test_report_html.py) checks each against `--json`.
"""
from __future__ import annotations

import html
from pathlib import Path

from . import report_plots as plots

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;background:#f5f6f8;color:#222}
header{background:#1f3b5a;color:#fff;padding:22px 40px}
header h1{margin:0;font-size:24px;font-weight:600}header p{margin:6px 0 0;color:#c9d6e6}
main{max-width:1120px;margin:0 auto;padding:18px 28px 40px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:4px 0 8px}
.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:150px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card b{display:block;font-size:22px;color:#1f3b5a}.card small{color:#666}
section{background:#fff;border-radius:8px;padding:16px 22px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
section h2{margin:0 0 4px;font-size:18px;color:#1f3b5a}section p.note{margin:2px 0 10px;color:#555;font-size:13.5px}
.plots{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.plots svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}
th:first-child,td:first-child{text-align:left}th{color:#555;font-weight:600}
details summary{cursor:pointer;color:#1f3b5a;font-size:13px}
footer{color:#777;font-size:12px;text-align:center;padding:8px}
"""


def _get(d: dict, path: str):
    for k in path.split("/"):
        d = d[int(k)] if isinstance(d, list) else d[k]
    return d


class Page:
    """The dict, and the spans that show its numbers."""

    def __init__(self, d: dict):
        self.d = d

    def n(self, path: str, fmt: str = ".3g", scale: float = 1.0) -> str:
        """The number at `path`, times `scale`, formatted with `fmt`; tagged with where it came from."""
        v = _get(self.d, path)
        text = "–" if v is None else format(v if scale == 1 else v * scale, fmt)
        return (f'<span data-json="{html.escape(path)}" data-scale="{scale!r}" data-fmt="{html.escape(fmt)}">'
                f"{text}</span>")


def _by_number(items) -> list:
    """(key, value) pairs of a JSON object whose keys are integers (contexts, prompt lengths), in order."""
    return sorted(items, key=lambda kv: int(kv[0]))


def _program_order(k: str):
    """Sections as the program runs them: the embedding, layers.0, layers.1, ..., then the rest."""
    n = k.removeprefix("layers.")
    return (1, int(n), "") if k.startswith("layers.") and n.isdigit() else (0 if "embed" in k else 2, 0, k)


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _section(title: str, note: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2><p class=note>{note}</p>{''.join(parts)}</section>"


def _sim(d: dict) -> tuple[dict, str]:
    """The timing part of the dict and its path prefix (report: under "simulate")."""
    return (d["simulate"], "simulate/") if d["kind"] == "report" else (d, "")


def _cards(p: Page) -> str:
    d = p.d
    sim, s = _sim(d)
    res = d["resources"]
    cards = [(p.n(f"{s}decode_tokens_per_s", ".1f"), "decode tokens/s"),
             (p.n(f"{s}ttft_s", ".2f", 1e3), f"ms TTFT, prompt of {sim['prefill']}"),
             (p.n("hbm/bytes_total", ".2f", 1e-9), "GB in HBM") if d["hbm"]["bytes_total"] >= 1e8 else
             (p.n("hbm/bytes_total", ".2f", 1e-6), "MB in HBM"),
             (p.n("resources/dsp/used", ",.0f"), f"DSP of {res['dsp']['capacity']:,.0f}")]
    if d["kind"] == "report":
        cards.insert(2, (p.n("power/joules_per_token", ".3f"), "J per decode token"))
    return "<div class=cards>" + "".join(f"<div class=card><b>{v}</b><small>{k}</small></div>" for v, k in cards) + "</div>"


def _roofline(p: Page) -> str:
    d = p.d
    sim, s = _sim(d)
    rows = d.get("roofline", [])
    achieved = []
    for stage in ("prefill", "decode"):
        b = sim["breakdown"][stage]
        if b["hbm_bytes"] and b["seconds"]:
            achieved.append((f"{stage}, timed", 2 * b["macs"] / b["hbm_bytes"], 2 * b["macs"] / b["seconds"]))
    svg = plots.roofline_plot(rows, d["roofs"], achieved)
    table = ""
    if "stages" in d:
        table = _table(["stage", "ops", "ideal ms (op by op)", "bound ms (overlapped)", "GB moved", "timed ms"],
                       [[st, str(sum(1 for r in rows if r["stage"] == st)), p.n(f"stages/{st}/ideal_s", ".3f", 1e3),
                         p.n(f"stages/{st}/bound_s", ".3f", 1e3), p.n(f"stages/{st}/bytes", ".3f", 1e-9),
                         p.n(f"{s}breakdown/{st}/seconds", ".3f", 1e3)] for st in ("prefill", "decode")])
    note = ("Every op of the prefill and of one decode step at its arithmetic intensity and its ideal ops/s on the "
            "unit that runs it; stars are whole runs as the timing model times them (MACs ×2 over HBM bytes and "
            "over seconds)." if rows else "A build holds no graph: the stars are the timed prefill and decode "
            "step (MACs ×2 over HBM bytes and over seconds); `llmfab report` places every op.")
    roofs = _table(["roof", "value"], [["memory GB/s", p.n("roofs/memory_bytes_per_s", ".1f", 1e-9)],
                                       ["engine MM Tops/s", p.n("roofs/engine_mm_ops_per_s", ".3f", 1e-12)],
                                       ["engine MV Tops/s", p.n("roofs/engine_mv_ops_per_s", ".3f", 1e-12)],
                                       ["SFU Gops/s", p.n("roofs/sfu_ops_per_s", ".1f", 1e-9)]])
    return _section("Roofline", note, f"<div class=plots>{svg}</div>", table, roofs)


def _time(p: Page) -> str:
    sim, s = _sim(p.d)
    parts, tables = [], []
    bd = sim["breakdown"]
    units = list(bd["decode"]["units"])
    parts.append(plots.grouped_bars(units, {st: [bd[st]["units"][u] / bd[st]["seconds"] * 100 for u in units]
                                            for st in ("prefill", "decode")},
                                    "Busy time of each unit (% of the run)", "% busy", "units"))
    tables.append(_table(["unit"] + [f"{st} ms" for st in ("prefill", "decode")],
                         [[u] + [p.n(f"{s}breakdown/{st}/units/{u}", ".3f", 1e3) for st in ("prefill", "decode")]
                          for u in units]))
    for st in ("decode", "prefill"):
        ops = sorted(bd[st]["ops"].items(), key=lambda kv: (-kv[1], kv[0]))[:12]
        parts.append(plots.hbars(ops, f"{st}: unit time per function (top {len(ops)}, ms)", "ms", f"ops-{st}",
                                 scale=1e3, color=plots.PALETTE[0 if st == "decode" else 1]))
    for st in ("decode", "prefill"):
        secs = sorted(bd[st]["sections"].items(), key=lambda kv: _program_order(kv[0]))
        parts.append(plots.hbars(secs, f"{st}: time each layer adds to the run (ms)", "ms", f"sections-{st}",
                                 scale=1e3, color=plots.PALETTE[2 if st == "decode" else 3]))
        tables.append(f"<details><summary>{st}: every layer and function (ms)</summary>" + _table(
            ["section", "ms"], [[html.escape(k), p.n(f"{s}breakdown/{st}/sections/{k}", ".4f", 1e3)] for k, _ in secs])
            + _table(["function", "ms"], [[html.escape(k), p.n(f"{s}breakdown/{st}/ops/{k}", ".4f", 1e3)]
                                         for k, _ in sorted(bd[st]["ops"].items(), key=lambda kv: (-kv[1], kv[0]))])
            + "</details>")
    note = (f"The timing model ({html.escape(sim['model'])}): prefill of {sim['prefill']} tokens and the decode step "
            f"at mid context. A layer's time is what it adds to the critical path.")
    return _section("Where the time goes", note, "<div class=plots>" + "".join(parts) + "</div>", *tables)


def _curves(p: Page) -> str:
    d = p.d
    sim, s = _sim(d)
    dec, ttft = dict(_by_number(sim["curves"]["decode_s_per_token"].items())), dict(_by_number(sim["curves"]["ttft_s"].items()))
    bounds = d.get("bounds", {})
    if bounds:
        bounds = {k: dict(_by_number(v.items())) for k, v in bounds.items()}
    cx = [int(c) for c in dec]
    left = {"tokens/s (timing model)": (cx, [1 / v for v in dec.values()])}
    if bounds:
        left["tokens/s (roofline bound)"] = (cx, [1 / v for v in bounds["decode_s_per_token"].values()])
    dplot = plots.lines(left, "Decode tokens/s against context", "context (tokens in the KV cache)", "tokens/s",
                        "decode")
    right = {"ms/token (timing model)": (cx, [v * 1e3 for v in dec.values()])}
    if bounds:
        right["ms/token (roofline bound)"] = (cx, [v * 1e3 for v in bounds["decode_s_per_token"].values()])
    dplot += plots.lines(right, "Decode ms per token against context", "context (tokens in the KV cache)", "ms",
                         "decode-ms")
    px = [int(n) for n in ttft]
    tl = {"TTFT (timing model)": (px, [v * 1e3 for v in ttft.values()])}
    if bounds:
        tl["TTFT (roofline bound)"] = (px, [v * 1e3 for v in bounds["ttft_s"].values()])
    tplot = plots.lines(tl, "Time to first token against prompt length", "prompt tokens", "ms", "ttft")
    dt = _table(["context", "ms/token", "tokens/s"] + (["bound ms"] if bounds else []),
                [[c, p.n(f"{s}curves/decode_s_per_token/{c}", ".3f", 1e3),
                  f"{1 / v:.1f}"] + ([p.n(f"bounds/decode_s_per_token/{c}", ".3f", 1e3)] if bounds else [])
                 for c, v in dec.items()])
    tt = _table(["prompt", "TTFT ms"] + (["bound ms"] if bounds else []),
                [[n, p.n(f"{s}curves/ttft_s/{n}", ".3f", 1e3)] + ([p.n(f"bounds/ttft_s/{n}", ".3f", 1e3)] if bounds else [])
                 for n in ttft])
    return (_section("Decode speed against context", "Each decode step timed at evenly spaced contexts over the "
                     "build's whole length (tokens/s = 1 / seconds per token).", f"<div class=plots>{dplot}</div>", dt)
            + _section("Time to first token against prompt length", "The prompt runs in chunks of "
                       f"{d['storage']['prefill_step']} tokens, one program per chunk; TTFT at every chunk end.",
                       f"<div class=plots>{tplot}</div>", tt))


def _resources(p: Page) -> str:
    d = p.d
    res = {k: v for k, v in d["resources"].items() if v["capacity"]}
    hbm = d["hbm"]
    cap = hbm.get("capacity_per_channel")
    items = [(k.upper(), v["used"] / v["capacity"] * 100) for k, v in res.items()]
    if cap:
        items.append(("HBM (fullest channel)", hbm["bytes_per_channel"] / cap * 100))
    svg = plots.hbars(items, f"Resources against the device ({html.escape(d['target'])}), % used", "% of the device",
                      "resources", fmt="{:.1f}%", color=plots.PALETTE[4])
    rows = [[k.upper(), p.n(f"resources/{k}/used", ",.0f"), p.n(f"resources/{k}/capacity", ",.0f")] for k in res]
    if cap:
        rows.append(["HBM bytes (fullest channel)", p.n("hbm/bytes_per_channel", ",.0f"),
                     p.n("hbm/capacity_per_channel", ",.0f")])
    return _section("Resources against the device", "Estimates of the accelerator the target describes, "
                    "per unit from synthesis runs (passes/resource_costs.yaml); HBM as laid out.", f"<div class=plots>{svg}</div>",
                    _table(["resource", "used", "device"], rows))


def _storage(p: Page) -> str:
    st = p.d["storage"]
    ratio = st["bytes_per_exact_length"] / st["bytes_bucketed"] if st["bytes_bucketed"] else 0
    svg = plots.hbars([("bucketed (stored)", st["bytes_bucketed"]), ("one program per length", st["bytes_per_exact_length"])],
                      "Instruction storage (MB" + (", log scale)" if ratio > 50 else ")"), "MB", "storage",
                      scale=1e-6, fmt="{:,.2f} MB", color=plots.PALETTE[5], log=ratio > 50)
    return _section("Instruction storage", f"{st['programs']} programs serve every length (prefill chunks of "
                    f"{st['prefill_step']}, decode buckets of {st['decode_step']} contexts); one program per exact "
                    f"length would take {ratio:,.0f}× the space.", f"<div class=plots>{svg}</div>",
                    _table(["", "bytes"], [["bucketed", p.n("storage/bytes_bucketed", ",.0f")],
                                           ["one program per exact length", p.n("storage/bytes_per_exact_length", ",.0f")]]))


def _bits(p: Page) -> str:
    f = p.d["weight_formats"]
    if not f:
        return _section("Bits of every layer", "This build was compiled before builds recorded their weight formats: "
                        "compile it again to see them.")
    rows = [[html.escape(w["weight"]), p.n(f"weight_formats/{i}/bits", "d"),
             "–" if w["group"] is None else p.n(f"weight_formats/{i}/group", "d"), html.escape(w["sparsity"] or "dense"),
             p.n(f"weight_formats/{i}/bits_per_weight", ".3f")] for i, w in enumerate(f)]
    other = ", ".join(f"{html.escape(w['weight'])} {p.n(f'weight_formats/{i}/bits_per_weight', '.3f')}"
                      for i, w in enumerate(f) if w["layer"] is None)
    return _section("Bits of every layer", f"Policy {html.escape(str(p.d.get('policy')))}: each weight's bits, group "
                    "along K and N:M pattern; bits per weight counts codes, sparsity indices, scales and shifts"
                    + (f". Outside the layers: {other} bits per weight." if other else "."),
                    f"<div class=plots>{plots.bits_grid(f)}</div>",
                    "<details><summary>every weight</summary>" + _table(
                        ["weight", "bits", "group", "sparsity", "bits/weight"], rows) + "</details>")


def render_html(d: dict) -> str:
    """The page for a `report_data` or `simulate_data` dict (after a JSON round trip)."""
    plots._mpl()
    p = Page(d)
    if d["kind"] == "report":
        title = f"{Path(d['model']).name} on {d['target']}"
        sub = (f"llmfab report · policy {d['policy']} · prefill {d['prefill']} tokens · decode analysed at context "
               f"{d['decode_context']} · timing: the pipelined design (a what-if; `llmfab simulate` times the RTL)")
    else:
        title = f"{Path(str(d['model_source'])).name} on {d['target']}"
        sub = (f"llmfab simulate · policy {d['policy']} · max length {d['max_len']} · prefill {d['prefill']}, "
               f"{d['decode']} decode steps · timing model: {d['model']}")
    body = (_cards(p) + _roofline(p) + _time(p) + _curves(p) + _resources(p) + _storage(p) + _bits(p))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)} · llmfab</title><style>{CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(sub)}</p></header><main>{body}</main>"
            "<footer>Written by llmfab; every number is the one `--json` prints.</footer></body></html>\n")
