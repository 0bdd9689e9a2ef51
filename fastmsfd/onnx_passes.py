"""Graph clean-ups applied to the exported ONNX model.

fold_pads: TensorFlow "SAME" padding of stride-2 convolutions is asymmetric, which torch's Conv2d cannot
express, so the export has a zero Pad in front of those convolutions. ONNX's Conv takes asymmetric pads: moving
the amounts into the Conv removes the Pad and, in ONNX Runtime, the layout reorders around it.
"""
from __future__ import annotations

import numpy as np


def _constant_value(graph, name: str, producers: dict, inits: dict) -> np.ndarray | None:
    """The value of `name` when it depends on constants only (the exporter spells literal pads as a chain of
    Constant/Reshape/Slice/Transpose/Cast nodes), evaluated with onnx's reference evaluator; else None."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    needed, stack, used_inits = set(), [name], set()  # nodes by their first output's name
    while stack:
        cur = stack.pop()
        if cur in inits:
            used_inits.add(cur)
            continue
        node = producers.get(cur)
        if node is None:
            return None  # a graph input: not constant
        if node.output[0] in needed:
            continue
        needed.add(node.output[0])
        stack.extend(i for i in node.input if i)
    order = [n for n in graph.node if n.output and n.output[0] in needed]  # graph order is topological
    sub = helper.make_graph(order, "constant", [], [helper.make_tensor_value_info(name, 0, None)],
                            initializer=[inits[i] for i in used_inits])
    opset = [helper.make_opsetid("", 17)]
    try:
        return np.asarray(ReferenceEvaluator(helper.make_model(sub, opset_imports=opset)).run(None, {})[0])
    except Exception:  # noqa: BLE001 - anything unexpected: leave that Pad alone
        return None


def _attr(node, name):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def fold_pads(model) -> int:
    """Fold zero Pads read only by Convs (NCHW, spatial pads only) into the Convs' pads; returns how many Pads
    were removed."""
    from onnx import helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    value = lambda name: _constant_value(graph, name, producers, inits)  # noqa: E731
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or (_attr(pad, "mode") or b"constant") != b"constant":
            continue
        users = consumers.get(pad.output[0], [])  # teacher and student stems share one padded input
        if not users or any(u.op_type != "Conv" for u in users) or pad.output[0] in graph_outputs:
            continue
        amounts = value(pad.input[1]) if len(pad.input) > 1 else None
        fill = value(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        if amounts is None or fill is None or np.any(fill != 0) or len(pad.input) > 3:
            continue
        amounts = [int(v) for v in np.asarray(amounts).reshape(-1)]
        if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0:
            continue
        if any((_attr(u, "auto_pad") or b"NOTSET") != b"NOTSET" or u.input[0] != pad.output[0] for u in users):
            continue
        for conv in users:
            old = list(_attr(conv, "pads") or [0, 0, 0, 0])
            new = [old[0] + amounts[2], old[1] + amounts[3], old[2] + amounts[6], old[3] + amounts[7]]
            kept = [a for a in conv.attribute if a.name != "pads"]
            del conv.attribute[:]
            conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
            conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    _prune_unused(graph)
    return len(folded)


def _prune_unused(graph) -> None:
    """Drop nodes whose outputs nothing reads any more (the Constant/Cast chains of folded pads)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)
