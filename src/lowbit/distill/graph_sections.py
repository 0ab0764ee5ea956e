"""DCQ sections of any torch.fx-traceable model: cut its traced graph where one tensor crosses.

``lowbit.distill.sections`` cuts an ``nn.Sequential`` between its children; every other model
comes here. The model is traced once with ``torch.fx`` (Conv/Linear layers, float or quantized,
and ``torch.nn``'s own modules stay leaves, so a layer is one ``call_module`` node named after its
path: ``layer1.0.conv1`` -> ``layer1_0_conv1``). Its operations (``call_module``,
``call_function``, ``call_method`` nodes) are cut into contiguous runs, one per section.

A cut "before node ``n``" is valid only when exactly one value crosses it: one value computed
before ``n`` (or the input) is used at or after ``n``, and nothing else is. Between two residual
blocks only the block output crosses; inside a block, across its skip connection, the main path
and the skip both cross, and such a cut is refused naming both. Attribute reads (``get_attr``)
are not values that cross: each section that reads one reads it itself.

Each section is a ``torch.fx.GraphModule`` taking the boundary tensor and returning the next one
(the last returns what the model returns). It holds the model's own modules (no copy) under
their full paths, re-registered in the model's registration order, so layer names, state-dict
keys and what ``quantize_`` resolves (first/last pin, a layer followed by a norm) are those of
the model. ``stitch_graphs`` inlines the sections back into one graph: the same operations in
the same order on the same modules, so its forward is the model's, bitwise.

Refused, with a ``ConfigError`` that says why: a model torch.fx cannot trace (data-dependent
control flow; the message names the call), a forward that reads ``self.training`` to choose its
operations (a traced graph would keep one branch), more than one input, and a cut that leaves a
module with parameters or buffers in two sections (each section trains its own copy).
"""

from __future__ import annotations

import linecache
import os
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from lowbit.costs import layer_macs
from lowbit.errors import ConfigError, did_you_mean
from lowbit.nn.modules import float_type

COMPUTE_OPS = ("call_module", "call_function", "call_method")
ORIGIN_ATTR = "dcq_origin"  # on every section / stitched module: the model's class name and registration order
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_THIS_FILE = str(Path(__file__).resolve())


class LayerLeafTracer(fx.Tracer):
    """torch.fx's tracer, with lowbit's quantized layers as leaves too: a quantized model traces to
    the same nodes as its float one."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return float_type(m) is not None or super().is_leaf_module(m, module_qualified_name)


# ---- tracing ----------------------------------------------------------------------------------

def _user_frame(error: BaseException) -> str:
    """Where tracing failed in the user's code: ``Class.method (file:line: `source`)``."""
    found = None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        path = str(Path(frame.f_code.co_filename).resolve())
        if not path.startswith(_TORCH_DIR + os.sep) and path != _THIS_FILE:
            found = frame, lineno, path
    if found is None:
        return "in its forward"
    frame, lineno, path = found
    owner = frame.f_locals.get("self")
    call = f"{type(owner).__name__}.{frame.f_code.co_name}" if owner is not None else frame.f_code.co_name
    line = linecache.getline(path, lineno).strip()
    return f"in {call} ({Path(path).name}:{lineno}" + (f": `{line}`)" if line else ")")


def _signature(graph: fx.Graph) -> list[tuple[str, str, str]]:
    """The graph's operations with node names replaced by positions (constants' names may differ
    between two traces)."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    return [(n.op, "<attr>" if n.op == "get_attr" else repr(n.target),
             repr(fx.node.map_arg((n.args, n.kwargs), lambda a: f"%{index[a]}"))) for n in graph.nodes]


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a GraphModule (a GraphModule is taken as it is, not traced again)."""
    if isinstance(model, fx.GraphModule):
        return model
    name = type(model).__name__
    modes = [(m, m.training) for m in model.modules()]
    graphs: dict[bool, fx.Graph] = {}
    try:
        for training in (model.training, not model.training):
            model.train(training)
            try:
                graphs[training] = LayerLeafTracer().trace(model)
            except Exception as e:  # noqa: BLE001 - any failure to trace is the same user error
                raise ConfigError(
                    f"DCQ cannot trace {name} with torch.fx to cut it into sections: {type(e).__name__} "
                    f"{_user_frame(e)}: {e}. Two ways out: split it by hand (make the model an nn.Sequential "
                    f"of its parts and give split points, split(model, at=[child names]): a part may hold "
                    f"any Python), or wrap the layers in an nn.Sequential whose forward only chains them "
                    f"(DCQ then cuts between its children without tracing)") from e
    finally:
        for m, training in modes:
            m.training = training
    graph = graphs[model.training]
    if _signature(graph) != _signature(graphs[not model.training]):
        raise ConfigError(f"{name}.forward runs different operations in training and in eval mode (it reads "
                          f"self.training, e.g. F.dropout(x, training=self.training)): a traced section would "
                          f"keep one of them. Use a module instead (nn.Dropout), or wrap the layers in an "
                          f"nn.Sequential and split that")
    gm = fx.GraphModule(model, graph, class_name=name)
    _set_origin(gm, {"model": name, "order": _registration_order(model)})
    return gm


# ---- the model's registration order -------------------------------------------------------------

def _registration_order(model: nn.Module) -> list[str]:
    names = [n for n, _ in model.named_modules()]
    names += [n for n, _ in model.named_parameters()]
    names += [n for n, _ in model.named_buffers()]
    return list(dict.fromkeys(names))


def origin_of(module: nn.Module) -> dict[str, Any] | None:
    """The model a section or stitched GraphModule comes from (class name, registration order)."""
    origin = getattr(module, ORIGIN_ATTR, None)
    if origin is None and isinstance(module, fx.GraphModule):
        origin = module.meta.get(ORIGIN_ATTR)
    return origin


def _set_origin(gm: fx.GraphModule, origin: dict[str, Any]) -> None:
    """Record where ``gm`` comes from; kept as an attribute (survives pickling) and in ``meta``
    (survives deepcopy), then put its modules back in the model's registration order."""
    setattr(gm, ORIGIN_ATTR, origin)
    gm.meta[ORIGIN_ATTR] = origin
    restore_order(gm)


def restore_order(module: nn.Module) -> nn.Module:
    """Re-register the modules, parameters and buffers of a section or stitched GraphModule in
    the original model's order (GraphModule installs them in graph order, also when it is deep
    copied or unpickled), so ``quantize_`` and optimizers see the model's layer order. Other
    modules are returned unchanged."""
    origin = origin_of(module)
    if origin is None:
        return module
    setattr(module, ORIGIN_ATTR, origin)
    rank = {name: i for i, name in enumerate(origin["order"])}

    def sort(container: nn.Module, prefix: str) -> None:
        for attr in ("_modules", "_parameters", "_buffers"):
            table = getattr(container, attr)
            keys = sorted(table, key=lambda k: rank.get(prefix + k, len(rank)))  # stable: unknown names stay put
            if keys != list(table):
                items = [(k, table[k]) for k in keys]
                table.clear()
                table.update(items)
        for key, child in container._modules.items():
            if type(child) is nn.Module:  # a path container GraphModule made; the model's own modules stay as they are
                sort(child, f"{prefix}{key}.")

    sort(module, "")
    return module


# ---- the cut analysis -------------------------------------------------------------------------

def _attr(root: nn.Module, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _has_state(obj: Any) -> bool:
    if isinstance(obj, nn.Module):
        return any(True for _ in obj.parameters()) or any(True for _ in obj.buffers())
    return isinstance(obj, nn.Parameter)


class GraphSplit:
    """A traced model, its operations and what crosses the point before each of them."""

    def __init__(self, model: nn.Module) -> None:
        self.gm = trace(model)
        self.origin = origin_of(self.gm) or {"model": type(model).__name__, "order": _registration_order(model)}
        self.name = self.origin["model"]
        nodes = list(self.gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ConfigError(f"DCQ sections pass one tensor from one to the next, so the model must take one "
                              f"input; {self.name}.forward takes {len(inputs)} ({', '.join(n.name for n in inputs)})")
        self.input = inputs[0]
        self.output = next(n for n in nodes if n.op == "output")
        self.ops = [n for n in nodes if n.op in COMPUTE_OPS]
        if not self.ops:
            raise ConfigError(f"{self.name} has no operations to cut into sections")
        self.position = {n: i for i, n in enumerate(nodes)}
        self.index = {n.name: i for i, n in enumerate(self.ops)}
        last_use = {n: max((self.position[u] for u in n.users), default=-1) for n in nodes}
        self.crossing: list[list[fx.Node]] = []  # per operation: the values crossing the point before it
        live: list[fx.Node] = []
        for n in nodes:
            if n.op in COMPUTE_OPS:
                live = [v for v in live if last_use[v] >= self.position[n]]
                self.crossing.append(live)
            if n.op in ("placeholder", *COMPUTE_OPS) and n.users:
                live = [*live, n]

    # ---- names ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [n.name for n in self.ops]

    def valid(self) -> list[int]:
        """Indices of the operations a section can start at (sections 2..K): one value crosses."""
        return [i for i in range(1, len(self.ops)) if len(self.crossing[i]) == 1]

    def weighted(self, node: fx.Node) -> bool:
        """Whether ``node`` calls a Conv/Linear layer."""
        return node.op == "call_module" and float_type(self.gm.get_submodule(node.target)) is not None

    def resolve(self, name: str) -> int:
        """The operation a split point names: a node name, or a module path (its first operation)."""
        if not isinstance(name, str):
            raise ConfigError(f"a split point is a node or module name, got {name!r}")
        if name in self.index:
            return self.index[name]
        for i, n in enumerate(self.ops):
            stack = [key.split("@")[0] for key in (n.meta.get("nn_module_stack") or {})]
            target = n.target if n.op == "call_module" else ""
            if name in stack or target == name or target.startswith(name + "."):
                return i
        others = {n.name: n.op for n in (self.input, self.output)} | {
            n.name: n.op for n in self.gm.graph.nodes if n.op == "get_attr"}
        if name in others:
            raise ConfigError(f"split point {name!r} is the model's {others[name].replace('_', ' ')}, not an "
                              "operation; a split point names the first operation of a new section")
        valid = [self.ops[i].name for i in self.valid()]
        raise ConfigError(f"unknown split point {name!r}{did_you_mean(name, self.names)}; name a node of "
                          f"{self.name}'s traced graph or a submodule path. Points where one tensor crosses: "
                          f"{_listing(valid)}")

    def _crossing_text(self, i: int) -> str:
        at = self.position[self.ops[i]]
        parts = []
        for v in self.crossing[i]:
            users = [u.name for u in v.users if self.position[u] >= at]
            parts.append(f"{v.name!r} (used by {', '.join(repr(u) for u in users)})")
        return ", ".join(parts)

    def check(self, i: int, name: str) -> None:
        """Refuse a cut before operation ``i`` unless exactly one value crosses it."""
        if i == 0:
            raise ConfigError(f"split point {name!r} is the model's first operation: the first section would be "
                              "empty (a split point names the first operation of a new section)")
        crossing = self.crossing[i]
        if len(crossing) == 1:
            return
        valid = self.valid()
        near = [self.ops[j].name for j in ([j for j in valid if j < i][-1:] + [j for j in valid if j > i][:1])]
        what = (f"{len(crossing)} tensors cross it: {self._crossing_text(i)}" if crossing else
                "nothing crosses it (what comes after does not use what comes before)")
        raise ConfigError(f"cannot cut {self.name} before node {self.ops[i].name!r}: {what}. A DCQ section "
                          f"passes exactly one tensor to the next, so cut where a single tensor crosses (between "
                          f"residual blocks, not inside one across its skip connection); nearest valid points: "
                          f"{', '.join(near) or 'none'}")

    def check_points(self, at: Sequence[str]) -> list[str]:
        """Validate user split points; return them as node names."""
        indices = [self.resolve(name) for name in at]
        for name, i in zip(at, indices):
            self.check(i, name)
        if len(set(indices)) != len(indices):
            raise ConfigError(f"split points repeat an operation: {', '.join(at)}")
        if indices != sorted(indices):
            raise ConfigError(f"split points must follow the order of {self.name}'s operations; got {', '.join(at)}")
        return [self.ops[i].name for i in indices]

    # ---- costs and automatic cuts -------------------------------------------------------------
    def param_costs(self) -> list[int]:
        """Parameters per operation: a module's at its first call, a ``get_attr`` parameter's at its
        first user."""
        seen: set[str] = set()
        costs = []
        for n in self.ops:
            cost = 0
            reads = [n] if n.op == "call_module" else []
            reads += [a for a in n.all_input_nodes if a.op == "get_attr"]
            for r in reads:
                if r.target in seen:
                    continue
                seen.add(r.target)
                obj = _attr(self.gm, r.target)
                cost += sum(p.numel() for p in obj.parameters()) if isinstance(obj, nn.Module) else (
                    obj.numel() if isinstance(obj, nn.Parameter) else 0)
            costs.append(cost)
        return costs

    def mac_costs(self, sample_input: torch.Tensor) -> list[float]:
        """Multiply-accumulates per sample of each Conv/Linear call (a layer called several times
        shares its count equally between its calls)."""
        totals = layer_macs(self.gm, sample_input)
        calls: dict[str, int] = {}
        for n in self.ops:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        return [totals.get(n.target, 0) / calls[n.target] if n.op == "call_module" else 0 for n in self.ops]

    def blocks(self, sections: int) -> list[int]:
        """Where automatic sections may start: operation 0, then each valid point just before a
        Conv/Linear layer; every valid point if that is too few for ``sections``."""
        valid = self.valid()
        starts = [0] + [i for i in valid if self.weighted(self.ops[i])]
        if sections > len(starts):
            starts = [0] + valid
        if sections > len(starts):
            where = (f"only {len(valid)} point(s) between its operations are crossed by a single tensor "
                     f"({_listing([self.ops[i].name for i in valid])}), at the others a skip connection crosses too"
                     if valid else "every point between its operations is crossed by more than one tensor (a skip "
                     "connection around them)")
            raise ConfigError(f"cannot split {self.name} into {sections} sections: {where}. A DCQ section passes "
                              "exactly one tensor to the next")
        return starts

    # ---- the sections -------------------------------------------------------------------------
    def sections(self, points: Sequence[str]) -> list[fx.GraphModule]:
        """One GraphModule per run of operations, cut before each of ``points`` (checked)."""
        bounds = [0, *(self.index[p] for p in points), len(self.ops)]
        owner: dict[str, int] = {}
        for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
            for n in self.ops[a:b]:
                reads = [n] if n.op == "call_module" else []
                for r in reads + [x for x in n.all_input_nodes if x.op == "get_attr"]:
                    if _has_state(_attr(self.gm, r.target)) and owner.setdefault(r.target, s) != s:
                        raise ConfigError(f"{r.target!r} is used in sections {owner[r.target] + 1} and {s + 1}: DCQ "
                                          "trains each section's copy of a layer separately, so a module with "
                                          "parameters or buffers cannot be shared across a cut; choose other "
                                          "split points")
        result = []
        for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
            graph = fx.Graph()
            env: dict[fx.Node, fx.Node] = {}
            if s == 0:
                env[self.input] = graph.node_copy(self.input)
            else:
                boundary = self.crossing[a][0]
                env[boundary] = graph.placeholder(boundary.name)
            last = b == len(self.ops)
            for n in self.ops[a:b] + ([self.output] if last else []):
                for x in n.all_input_nodes:
                    if x.op == "get_attr" and x not in env:
                        env[x] = graph.node_copy(x)
                env[n] = graph.node_copy(n, env.__getitem__)
            if not last:
                graph.output(env[self.crossing[b][0]])
            graph.lint()
            section = fx.GraphModule(self.gm, graph, class_name=f"{self.name}Section")
            _set_origin(section, self.origin)
            result.append(section)
        return result


def _listing(names: Sequence[str], limit: int = 12) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---- sections -> names, labels, one module ------------------------------------------------------

def section_ops(section: fx.GraphModule) -> list[str]:
    """The operation names of a section (or of any GraphModule), in order."""
    return [n.name for n in section.graph.nodes if n.op in COMPUTE_OPS]


def stitch_graphs(sections: Sequence[fx.GraphModule]) -> fx.GraphModule:
    """One GraphModule running the sections' operations one after the other, on their modules."""
    graph = fx.Graph()
    attrs: dict[str, fx.Node] = {}
    root: dict[str, Any] = {}
    names: set[str] = set()
    current: fx.Node | None = None
    origin = None

    def install(target: str, obj: Any, s: int) -> None:
        if target in root and root[target] is not obj:
            raise ConfigError(f"cannot stitch: {target!r} is a different object in section {s + 1} than in an "
                              "earlier one (are these sections of one split?)")
        root[target] = obj

    for s, section in enumerate(sections):
        if not isinstance(section, fx.GraphModule):
            raise ConfigError(f"cannot stitch: section {s + 1} is a {type(section).__name__}, the others "
                              "GraphModules from splitting a traced model")
        origin = origin or origin_of(section)
        inputs = [n for n in section.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ConfigError(f"cannot stitch: section {s + 1} takes {len(inputs)} inputs (a section takes one tensor)")
        env: dict[fx.Node, fx.Node] = {}
        for n in section.graph.nodes:
            if n.op == "placeholder":
                env[n] = graph.node_copy(n) if s == 0 else current
            elif n.op == "get_attr":
                install(n.target, _attr(section, n.target), s)
                if n.target not in attrs:
                    attrs[n.target] = graph.node_copy(n)
                env[n] = attrs[n.target]
            elif n.op == "output":
                if s == len(sections) - 1:
                    graph.node_copy(n, env.__getitem__)
                elif not isinstance(n.args[0], fx.Node):
                    raise ConfigError(f"cannot stitch: section {s + 1} returns {type(n.args[0]).__name__}, "
                                      "not the one tensor the next section takes")
                else:
                    current = env[n.args[0]]
            else:
                if n.name in names:
                    raise ConfigError(f"cannot stitch: operation {n.name!r} appears in more than one section "
                                      f"(again in section {s + 1})")
                names.add(n.name)
                if n.op == "call_module":
                    install(n.target, section.get_submodule(n.target), s)
                env[n] = graph.node_copy(n, env.__getitem__)
    graph.lint()
    model = fx.GraphModule(root, graph, class_name=origin["model"] if origin else "Stitched")
    if origin is not None:
        _set_origin(model, origin)
    return model
