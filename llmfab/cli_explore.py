"""The `explore` command of the `llmfab` command line (llmfab/explore.py does the sweep); cli.py
builds the parser and dispatches here."""
from __future__ import annotations

import json
import os
from pathlib import Path


def cmd_explore(args) -> int:
    from llmfab.compile import compile_inputs
    from llmfab.ir.folders import check_output, write_folder

    from .explore import default_cache, explore, format_summary, points_csv
    from .explore_html import render_explore_html
    from .report_plots import _mpl

    inputs = compile_inputs(args.model, args.target, args.space)
    check_output(args.out, "explore", inputs)     # before the sweep
    _mpl()                                        # report.html needs matplotlib: say so before the sweep
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache()
    data, best, stats = explore(args.model, args.target, args.space, executor=args.executor,
                                jobs=args.jobs or os.cpu_count() or 1, ray_address=args.ray_address, cache=cache)
    files = {"points.json": (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
             "points.csv": points_csv(data).encode(), "report.html": render_explore_html(data).encode(), **best}
    write_folder(args.out, "explore", files, inputs)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_summary(data, stats, args.out, len(best)), end="")
    return 0


def add_explore_parser(sub, at_least) -> None:
    ex = sub.add_parser("explore", help="sweep a design space: every point checked, compiled and timed; "
                        "Pareto fronts, a report and the best points' targets")
    ex.add_argument("model", help="an .onnx file, a Hugging Face config.json, or a preset name")
    ex.add_argument("--target", required=True, help="the base target the points vary (bundled name or YAML file)")
    ex.add_argument("--space", required=True, help="the space file: axes and their values or ranges (docs/explore.md)")
    ex.add_argument("-o", "--out", required=True, help="the folder to write (points.json, points.csv, report.html, "
                    "best-*.yaml)")
    ex.add_argument("--json", action="store_true", help="print points.json")
    ex.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local: a process pool (default); ray: Ray tasks (pip install 'llmfab[explore]')")
    ex.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="an existing Ray cluster (default: start a local Ray of --jobs CPUs)")
    ex.add_argument("--jobs", type=at_least(1), default=None, help="points at a time (default: the CPUs)")
    ex.add_argument("--cache", default=None, metavar="DIR", help="where point results are cached by content "
                    "(default ~/.cache/llmfab/explore)")
    ex.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    ex.set_defaults(func=cmd_explore)
