"""Validate and execute a ComfyUI API-format graph (what "Save (API Format)" exports).

A graph is ``{node_id: {"class_type": str, "inputs": {name: value | [node_id, output_index]}}}``.
:func:`validate` answers what ComfyUI's ``execution.validate_prompt`` answers: the output nodes that
can run, and ``node_errors`` in ComfyUI's shape; a graph that cannot run at all raises
:class:`PromptRejected` carrying the ``error`` object of ComfyUI's 400 answer. :func:`execute` runs
the nodes the outputs need, each once, inputs before the nodes that read them.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sdlab.runtime.comfy_nodes import NODE_TYPES, Catalog, Interrupted, NodeContext


class PromptRejected(Exception):
    """The graph cannot run; ``error`` and ``node_errors`` are the body of ComfyUI's 400 answer."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> None:
        self.error = error
        self.node_errors = node_errors or {}
        super().__init__(f"{error['message']}: {error['details']}")


@dataclass
class NodeFailed(Exception):
    """A node raised while executing (ComfyUI's ``execution_error``)."""

    node_id: str
    node_type: str
    exception: BaseException
    executed: list[str]

    def details(self) -> dict[str, Any]:
        exc = self.exception
        kind = type(exc)
        return {
            "node_id": self.node_id,
            "node_type": self.node_type,
            "executed": self.executed,
            "exception_message": str(exc),
            "exception_type": kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": {},
            "current_outputs": {},
        }


@dataclass
class NodeInterrupted(Exception):
    node_id: str
    node_type: str
    executed: list[str]


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _convert(kind: Any, value: Any) -> Any:
    if kind == "INT":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number")
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "STRING":
        return str(value)
    return value


class _Validator:
    """ComfyUI's per-node checks, memoised per node, following links toward the inputs."""

    def __init__(self, prompt: Mapping[str, Any], catalog: Catalog) -> None:
        self.prompt = prompt
        self.catalog = catalog
        self.results: dict[str, list[dict[str, Any]] | None] = {}  # None: fine
        self.upstream_failed: set[str] = set()
        self.visiting: set[str] = set()
        self.values: dict[str, dict[str, Any]] = {}

    def check(self, node_id: str) -> bool:
        if node_id in self.results:
            return self.results[node_id] is None and node_id not in self.upstream_failed
        self.visiting.add(node_id)
        node = self.prompt[node_id]
        spec = NODE_TYPES[node["class_type"]]
        inputs = node.get("inputs") or {}
        errors: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        for name, info in spec.required(self.catalog).items():
            if name not in inputs:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            value = inputs[name]
            if isinstance(value, list):
                problem = self._link(node_id, name, info, value)
                if problem is not None:
                    errors.append(problem)
                values[name] = value
                continue
            kind, options = info[0], (info[1] if len(info) > 1 else {})
            try:
                value = _convert(kind, value)
            except (TypeError, ValueError) as exc:
                errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                                     f"{name}, {value}, {exc}", input_name=name, received_value=value))
                continue
            if "min" in options and value < options["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                     name, input_name=name, received_value=value))
            elif "max" in options and value > options["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                     name, input_name=name, received_value=value))
            elif isinstance(kind, list) and value not in kind:
                shown = str(kind) if len(kind) <= 20 else f"(list of length {len(kind)})"
                errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                                     input_name=name, received_value=value))
            values[name] = value
        self.visiting.discard(node_id)
        self.results[node_id] = errors or None
        self.values[node_id] = values
        return not errors and node_id not in self.upstream_failed

    def _link(self, node_id: str, name: str, info: tuple, link: list) -> dict[str, Any] | None:
        if len(link) != 2 or not isinstance(link[1], int):
            return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name, input_name=name, received_value=link)
        source = str(link[0])
        if source not in self.prompt:
            return _error("bad_linked_input", f"Input links to node {source}, which is not in the prompt",
                          name, input_name=name, received_value=link)
        if source in self.visiting:
            return _error("dependency_cycle", "Dependency cycle detected", f"{name} -> node {source}", input_name=name)
        returns = NODE_TYPES[self.prompt[source]["class_type"]].outputs
        if not 0 <= link[1] < len(returns) or returns[link[1]] != info[0]:
            received = returns[link[1]] if 0 <= link[1] < len(returns) else "nothing"
            return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, received_type({received}) mismatch input_type({info[0]})",
                          input_name=name, received_type=received, linked_node=link)
        if not self.check(source):
            self.upstream_failed.add(node_id)
        return None


def validate(prompt: Any, catalog: Catalog) -> tuple[list[str], dict[str, Any], dict[str, dict[str, Any]]]:
    """Return (output nodes to run, node_errors, converted input values per node) or raise PromptRejected."""
    if not isinstance(prompt, Mapping) or not prompt:
        raise PromptRejected(_error("invalid_prompt", "Cannot execute because the prompt is not a non-empty object.",
                                    "send {node_id: {class_type, inputs}}"))
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise PromptRejected(_error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                        f"Node ID '#{node_id}'"))
        spec = NODE_TYPES.get(node["class_type"])
        if spec is None:
            raise PromptRejected(_error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                        f"Node ID '#{node_id}'", supported_nodes=sorted(NODE_TYPES)))
        if spec.output_node:
            outputs.append(str(node_id))
    if not outputs:
        raise PromptRejected(_error("prompt_no_outputs", "Prompt has no outputs", "add a SaveImage node"))

    validator = _Validator(prompt, catalog)
    good: list[str] = []
    node_errors: dict[str, Any] = {}
    for out in sorted(outputs, key=_node_sort_key):
        if validator.check(out):
            good.append(out)
            continue
        for node_id, errors in validator.results.items():
            if errors:
                entry = node_errors.setdefault(node_id, {"errors": errors, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                if out not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(out)
    if not good:
        lines = [f"{e['message']}: {e['details']}" for entry in node_errors.values() for e in entry["errors"]]
        raise PromptRejected(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                    "\n".join(lines)), node_errors)
    return good, node_errors, validator.values


def _node_sort_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def execution_order(prompt: Mapping[str, Any], outputs: list[str]) -> list[str]:
    """Every node the outputs need, each once, inputs first (a validated graph has no cycles)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in (prompt[node_id].get("inputs") or {}).values():
            if isinstance(value, list):
                visit(str(value[0]))
        order.append(node_id)

    for out in outputs:
        visit(out)
    return order


def execute(prompt: Mapping[str, Any], outputs: list[str], values: Mapping[str, Mapping[str, Any]], ctx: NodeContext,
            on_node: Callable[[str], None], on_ui: Callable[[str, dict[str, Any]], None]) -> dict[str, dict[str, Any]]:
    """Run the graph; returns the UI outputs per node. Raises NodeFailed or NodeInterrupted."""
    results: dict[str, tuple[Any, ...]] = {}
    ui_outputs: dict[str, dict[str, Any]] = {}
    executed: list[str] = []
    for node_id in execution_order(prompt, outputs):
        class_type = prompt[node_id]["class_type"]
        if ctx.interrupted():
            raise NodeInterrupted(node_id, class_type, executed)
        on_node(node_id)
        ctx.node_id = node_id
        kwargs = {name: results[str(v[0])][v[1]] if isinstance(v, list) else v for name, v in values[node_id].items()}
        try:
            outs, ui = NODE_TYPES[class_type].run(ctx, **kwargs)
        except Interrupted:
            raise NodeInterrupted(node_id, class_type, executed) from None
        except Exception as exc:
            raise NodeFailed(node_id, class_type, exc, executed) from exc
        results[node_id] = outs
        executed.append(node_id)
        if ui is not None:
            ui_outputs[node_id] = ui
            on_ui(node_id, ui)
    return ui_outputs
