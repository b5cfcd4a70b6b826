"""The compile flow's front half: any model source -> verified, fused LLM-level graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from llmfab.frontend import ImportOptions, import_onnx
from llmfab.ir import Graph, InputRole, OpKind, run, verify
from llmfab.passes import FUSION_PIPELINE, PASSES, parse_pipeline, run_pipeline
from llmfab.passes.pass_base import PipelineReport

from .build import Build


class FlowError(ValueError):
    pass


def load_model(source: str, *, seq_len: int | None = None, past_len: int = 0, batch: int = 1,
               passes: str | None = None, print_between: bool = False,
               report: PipelineReport | None = None) -> Graph:
    """An .onnx file, a Hugging Face config.json or a preset name -> fused graph. `passes`: the
    pipeline to run after import instead of the default (`FUSION_PIPELINE` for ONNX,
    `canonical-names` for a config); `report`: filled with each pass's time and, with
    `print_between`, the graph after each pass."""
    from llmfab.frontend.config import PRESETS, load_config, load_preset

    p = Path(source)
    try:
        pipeline = parse_pipeline(passes, PASSES) if passes is not None else None
    except ValueError as e:
        raise FlowError(f"--passes {passes!r}: {e}") from None
    if is_onnx(source):
        g = import_onnx(p, ImportOptions(seq_len=seq_len, past_len=past_len, batch=batch))
        run_pipeline(g, pipeline or parse_pipeline(FUSION_PIPELINE, PASSES), print_between=print_between,
                     report=report)
        verify(g)
        return g
    kw = dict(seq_len=seq_len or 16, past_len=past_len, batch=batch)
    if p.suffix == ".json" or p.is_file():
        g = load_config(p, **kw)
    elif source in PRESETS:
        g = load_preset(source, **kw)
    else:
        raise FlowError(f"{source}: not an .onnx file, a config.json or a preset "
                        f"(presets: {', '.join(sorted(PRESETS))})")
    run_pipeline(g, pipeline or parse_pipeline("canonical-names", PASSES),   # the same names as ONNX imports
                 print_between=print_between, report=report)
    return g


def is_onnx(source: str) -> bool:
    """Whether `load_model` reads `source` as an ONNX file (else a config.json or a preset)."""
    p = Path(source)
    return p.suffix == ".onnx" or p.is_file() and p.suffix != ".json"


def leftover_primitives(g: Graph) -> list[str]:
    """Nodes fusion could not lift to LLM-level ops (empty for the supported families)."""
    from llmfab.ir.verify import unfused_nodes
    return [f"{n.name} ({n.op})" for n in unfused_nodes(g)]


def parse_tokens(text: str) -> np.ndarray:
    parts = text.replace(",", " ").split()
    if not parts:
        raise FlowError("--tokens is empty; give token ids like \"1 2 3\"")
    try:
        ids = [int(t) for t in parts]
    except ValueError:
        raise FlowError(f"--tokens must be integers separated by spaces, not {text!r}") from None
    return np.array([ids], dtype=np.int64)


def interpret(g: Graph, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Run the reference interpreter on token ids [1, S]; KV-cache inputs start empty."""
    feeds = {}
    for n in g.inputs():
        if n.attrs.role is InputRole.TOKENS:
            for emb in (u for u in g.users(n.name) if u.op is OpKind.EMBEDDING):
                vocab = g.node(emb.inputs[0]).type.shape[0]
                if tokens.min() < 0 or tokens.max() >= vocab:
                    raise FlowError(f"token ids must be in [0, {vocab}), got {tokens.min()}..{tokens.max()}")
            feeds[n.name] = tokens
        elif n.attrs.role in (InputRole.PAST_KEY, InputRole.PAST_VALUE):
            feeds[n.name] = np.zeros(n.type.shape, n.type.dtype.numpy)
        else:
            raise FlowError(f"graph input {n.name!r} ({n.attrs.role.value}) has no value to feed")
    return run(g, feeds)


def execute_build(path, tokens: np.ndarray, generate: int = 0):
    """`llmfab execute`: the prompt's logits and `generate` greedy tokens from the build's images."""
    from llmfab.simulator.execute import execute
    return execute(Build.open(path), tokens, generate)


def build_perplexity(path, data) -> float:
    """`llmfab execute BUILD --eval DATA`: the perplexity of the build's programs on the functional
    simulator over the evaluation set `data` (passes.perplexity.EvalSet), each sequence a prompt run
    from an empty KV cache; the logits are the exact Q.16 values, as the integer model's."""
    from llmfab.passes.perplexity import perplexity
    from llmfab.simulator.execute import prompt_logits

    build = Build.open(path)
    m = build.manifest
    if not m["weights"]:
        raise FlowError(f"{path}: a config-only build has no weight images to execute")
    data.check(m["output"]["vocab"], m["max_len"], "the build's max length (compile --max-len)")
    return perplexity(data, lambda ids: prompt_logits(build, ids))
