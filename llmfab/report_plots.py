"""The HTML report's plots: matplotlib figures of the `--json` dict, returned as SVG text.

Deterministic: the same dict gives the same bytes (no date in the metadata, a fixed hash salt per
figure so element ids are stable and unique across the page, text kept as <text>). matplotlib is
imported only here, and only for `--html` (the `report` extra)."""
from __future__ import annotations

import io

PALETTE = ["#3b6ea8", "#e07b39", "#4a9a5b", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd"]
INK, GRID = "#333333", "#e4e4e4"


def _mpl():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--html needs matplotlib: pip install 'llmfab[report]' (or pip install 'matplotlib>=3.8,<4')") from None
    return matplotlib


def figure(width: float = 7.2, height: float = 3.6):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    return fig


def svg(fig, salt: str) -> str:
    """The figure as an <svg> element, without the XML prolog, ids salted by `salt`."""
    mpl = _mpl()
    buf = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": f"llmfab-{salt}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "llmfab"}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, loc="left", fontsize=11, color=INK, fontweight="bold")
    ax.set_xlabel(xlabel, color=INK)
    ax.set_ylabel(ylabel, color=INK)
    ax.grid(True, color=GRID, linewidth=0.8, which="major")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#999999")
    ax.tick_params(colors=INK, labelsize=8.5)


def rc() -> dict:
    return {"font.family": "DejaVu Sans", "font.size": 9, "legend.frameon": False, "legend.fontsize": 8.5}


def roofline_plot(rows: list[dict], roofs: dict, achieved: list[tuple[str, float, float]]) -> str:
    """Log-log roofline: the memory slope and the engine and SFU peaks; every op of `rows` (the
    `--json` roofline) at its intensity and its ideal ops/s, coloured by kind, prefill as circles,
    decode as triangles; `achieved`: (label, intensity, ops/s) of whole timed runs as stars."""
    mpl = _mpl()
    with mpl.rc_context(rc()):
        fig = figure(7.6, 4.6)
        ax = fig.add_subplot()
        pts = [(r["intensity"], r["ops"] / r["seconds"], r["kind"], r["stage"]) for r in rows
               if r["intensity"] is not None and r["seconds"] > 0 and r["ops"] > 0]
        xs = [p[0] for p in pts] + [a[1] for a in achieved]
        lo, hi = (min(xs) / 4, max(xs) * 4) if xs else (0.1, 1e4)
        bw = roofs["memory_bytes_per_s"]
        ceilings = [("engine MM (prefill)", roofs["engine_mm_ops_per_s"], "-"),
                    ("engine MV (decode, attention)", roofs["engine_mv_ops_per_s"], "--"),
                    ("special-function unit", roofs["sfu_ops_per_s"], ":")]
        for label, peak, ls in ceilings:
            knee = peak / bw
            ax.plot([lo, knee, hi] if knee > lo else [lo, hi], [lo * bw, peak, peak] if knee > lo else [peak, peak],
                    color="#555555", linestyle=ls, linewidth=1.2, label=f"{label}: {peak / 1e12:.3g} Tops/s")
        kinds = sorted({p[2] for p in pts})
        for i, kind in enumerate(kinds):
            for stage, marker in (("prefill", "o"), ("decode", "^")):
                sel = [p for p in pts if p[2] == kind and p[3] == stage]
                if sel:
                    ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=22, marker=marker,
                               color=PALETTE[i % len(PALETTE)], alpha=0.8, edgecolors="white", linewidths=0.4,
                               label=kind if stage == ("prefill" if any(q[3] == "prefill" and q[2] == kind for q in pts)
                                                        else "decode") else None, zorder=3)
        for label, x, y in achieved:
            ax.scatter([x], [y], s=140, marker="*", color="#111111", zorder=4)
            ax.annotate(label, (x, y), xytext=(6, -12), textcoords="offset points", fontsize=8.5, color="#111111")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        style(ax, f"Roofline: memory {bw / 1e9:.0f} GB/s", "intensity (ops per byte of memory traffic)",
              "ops per second")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="○ prefill   △ decode   ★ timed run",
                  title_fontsize=8.5)
        return svg(fig, "roofline")


def hbars(items: list[tuple[str, float]], title: str, xlabel: str, salt: str, *, scale: float = 1.0,
          fmt: str = "{:.3g}", color: str = PALETTE[0], width: float = 5.4, log: bool = False) -> str:
    """Horizontal bars, first item on top, each labelled with its value * scale."""
    mpl = _mpl()
    with mpl.rc_context(rc()):
        fig = figure(width, 0.8 + 0.24 * max(len(items), 3))
        ax = fig.add_subplot()
        ys = range(len(items))
        vals = [v * scale for _, v in items]
        ax.barh(list(ys), vals, color=color, height=0.7)
        ax.set_yticks(list(ys), [k for k, _ in items])
        ax.invert_yaxis()
        top = max(vals, default=0) or 1
        for y, v in zip(ys, vals):
            ax.text(v * 1.15 if log else v + top * 0.01, y, fmt.format(v), va="center", fontsize=8, color=INK)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(v for v in vals if v > 0) / 3, top * 30)
        else:
            ax.set_xlim(0, top * 1.18)
        style(ax, title, xlabel, "")
        ax.grid(False, axis="y")
        return svg(fig, salt)


def grouped_bars(groups: list[str], series: dict[str, list[float]], title: str, ylabel: str, salt: str, *,
                 scale: float = 1.0, log: bool = False) -> str:
    """Vertical bars: one group per name, one bar per series in it."""
    mpl = _mpl()
    with mpl.rc_context(rc()):
        fig = figure(7.2, 3.2)
        ax = fig.add_subplot()
        n = max(len(series), 1)
        w = 0.8 / n
        for i, (name, vals) in enumerate(series.items()):
            xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
            ax.bar(xs, [v * scale for v in vals], width=w, color=PALETTE[i % len(PALETTE)], label=name)
        ax.set_xticks(list(range(len(groups))), groups)
        if log:
            ax.set_yscale("log")
        style(ax, title, "", ylabel)
        ax.grid(False, axis="x")
        if len(series) > 1:
            ax.legend()
        return svg(fig, salt)


def lines(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str, salt: str,
          *, right: tuple[str, dict[str, tuple[list[float], list[float]]]] | None = None) -> str:
    """Line plots with markers (name -> (xs, ys)), on a log y axis when the values span more than 20x;
    `right`: (label, more series) on a second y axis."""
    mpl = _mpl()
    with mpl.rc_context(rc()):
        fig = figure(5.4, 3.4)
        ax = fig.add_subplot()
        ys_all = [y for _, ys in series.values() for y in ys if y > 0]
        log = bool(ys_all) and max(ys_all) > 20 * min(ys_all)
        handles = []
        for i, (name, (xs, ys)) in enumerate(series.items()):
            handles += ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.8, color=PALETTE[i % len(PALETTE)],
                               linestyle="-" if i == 0 else "--", label=name)
        style(ax, title, xlabel, ylabel + (" (log scale)" if log else ""))
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        if right:
            ax2 = ax.twinx()
            for j, (name, (xs, ys)) in enumerate(right[1].items()):
                handles += ax2.plot(xs, ys, marker="s", markersize=3.5, linewidth=1.4,
                                    color=PALETTE[(len(series) + j) % len(PALETTE)], linestyle=":", label=name)
            ax2.set_ylabel(right[0], color=INK)
            ax2.set_ylim(bottom=0)
            ax2.spines["top"].set_visible(False)
            ax2.tick_params(colors=INK, labelsize=8.5)
        ax.legend(handles=handles, loc="best")
        return svg(fig, salt)


def bits_grid(formats: list[dict]) -> str:
    """Bits per weight of every layer: one cell per (role, layer), coloured and labelled."""
    mpl = _mpl()
    layers = sorted({f["layer"] for f in formats if f["layer"] is not None})
    roles = list(dict.fromkeys(f["role"] for f in formats if f["layer"] is not None))
    extra = []    # the embedding and LM head belong to no layer: the page's table lists them
    with mpl.rc_context(rc()):
        fig = figure(7.6, 1.1 + 0.3 * (len(roles) + (1 if extra else 0)))
        ax = fig.add_subplot()
        import numpy as np
        grid = np.full((len(roles) + (1 if extra else 0), max(len(layers), len(extra), 1)), np.nan)
        for f in formats:
            if f["layer"] is not None:
                grid[roles.index(f["role"]), layers.index(f["layer"])] = f["bits_per_weight"]
        for i, f in enumerate(extra):
            grid[len(roles), i] = f["bits_per_weight"]
        # one colour scale for every page (2 to 9 bits), so a uniform policy looks uniform
        im = ax.pcolormesh(np.ma.masked_invalid(grid), cmap="viridis", edgecolors="white", linewidth=0.5,
                           vmin=min(2.0, np.nanmin(grid)), vmax=max(9.0, np.nanmax(grid)))
        ax.invert_yaxis()
        ax.set_yticks([i + 0.5 for i in range(grid.shape[0])], roles)
        step = max(1, len(layers) // 16)
        ax.set_xticks([i + 0.5 for i in range(0, len(layers), step)], [str(layers[i]) for i in range(0, len(layers), step)])
        if len(layers) <= 16:
            for (y, x), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(x + 0.5, y + 0.5, f"{v:.2f}", ha="center", va="center", fontsize=7.5,
                            color="white" if v < 6 else "black")
        style(ax, "Bits per weight of every layer (codes, indices, scales)", "layer", "")
        ax.grid(False)
        fig.colorbar(im, ax=ax, label="bits per weight", fraction=0.04, pad=0.02)
        return svg(fig, "bits")


def pareto_plot(points: list[tuple[float, float, bool]], title: str, xlabel: str, salt: str) -> str:
    """`llmfab explore`: every point that fits as (cost, tokens/s, on the front); the front drawn
    as a staircase (a cheaper point is never faster than the front at its cost) and highlighted."""
    mpl = _mpl()
    with mpl.rc_context(rc()):
        fig = figure(5.6, 3.8)
        ax = fig.add_subplot()
        rest = [p for p in points if not p[2]]
        front = sorted(p for p in points if p[2])
        ax.scatter([p[0] for p in rest], [p[1] for p in rest], s=18, color=PALETTE[7], alpha=0.6,
                   edgecolors="none", label="dominated", zorder=2)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=PALETTE[1], linewidth=1.4,
                    zorder=3)
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=40, color=PALETTE[1], edgecolors="white",
                       linewidths=0.6, label="Pareto-optimal", zorder=4)
        style(ax, title, xlabel, "decode tokens/s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right")
        return svg(fig, salt)
