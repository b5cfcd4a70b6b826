"""`quantize --eval` and `execute --eval`: perplexity on a .npy of token ids (passes/perplexity.py)."""
from __future__ import annotations

import json


def eval_set(path: str):
    from llmfab.passes.perplexity import load_eval
    return load_eval(path)


def check_eval(model: str, g, data) -> None:
    """`quantize --eval`: the set fits the model (weights, vocabulary, positions) before quantizing."""
    from llmfab.flow import FlowError
    from llmfab.passes.perplexity import graph_vocab, position_limit
    from llmfab.passes.quantize import weight_sites

    if not all(g.node(s.const).data.has_values for s in weight_sites(g)):
        raise FlowError(f"{model}: --eval needs a model with weights (an .onnx file), not a config-only model")
    n_pos = g.meta.get("max_position_embeddings")   # a config's; an ONNX file's learned position table
    data.check(graph_vocab(g), n_pos if isinstance(n_pos, int) else position_limit(g), "the model's positions")


def with_perplexity(model: str, g, q, report, data, load_model):
    """The report with the float and quantized models' perplexities on `data` (the float graph bound
    to the set's length; the quantized weights are the ones `q` holds)."""
    import dataclasses

    from llmfab.passes.perplexity import bound_length, model_perplexities

    ge = g if bound_length(g) == data.length else load_model(model, seq_len=data.length)
    fp, qp = model_perplexities(ge, q, data, integer=report.integer_activations)
    return dataclasses.replace(report, float_perplexity=fp, perplexity=qp,
                               eval_set={"file": data.path, "sequences": data.sequences, "length": data.length})


def execute_eval(args) -> int:
    from llmfab.flow import build_perplexity

    data = eval_set(args.eval)
    ppl = build_perplexity(args.build, data)
    if args.json:
        print(json.dumps({"build": args.build, "perplexity": ppl, "eval_set": {
            "file": data.path, "sequences": data.sequences, "length": data.length}}, indent=2, sort_keys=True))
    else:
        print(f"perplexity   {ppl:.4f} (the build's programs on the functional simulator; "
              f"{data.sequences} x {data.length} tokens of {data.path})")
    return 0
