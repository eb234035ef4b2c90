"""Flattening a training state (nested dicts, lists and tuples of tensors and plain values,
as ``model.state_dict()`` and ``optimizer.state_dict()`` are) into named tensors plus a JSON
description of the structure, and back. No pickle: a value that is neither a tensor nor a
JSON scalar is refused with the path where it was found."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mithril.checkpoint._convert import _torch
from mithril.errors import ConfigError, FormatError

STATE_KEY = "mithril.state"

_SCALARS = (type(None), bool, int, float, str)


def _is_tensor(value: Any) -> bool:
    torch = _torch()
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def flatten(state: Any) -> tuple[dict[str, Any], str]:
    """(tensors by name, JSON of the structure). Tensor names are the '/'-joined path of keys
    and indices, e.g. ``optimizer/state/3/exp_avg``."""
    tensors: dict[str, Any] = {}

    def walk(value: Any, path: list[str]) -> Any:
        where = "/".join(path) or "<root>"
        if _is_tensor(value):
            name = where
            if name in tensors:
                raise ConfigError(f"two values flatten to the same name {name!r}")
            tensors[name] = value
            return {"t": "tensor", "name": name, "np": isinstance(value, np.ndarray)}
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if not isinstance(k, _SCALARS):
                    raise ConfigError(f"{where}: dict key {k!r} is not a str, int, float or bool")
                items.append([k, walk(v, [*path, str(k)])])
            return {"t": "dict", "items": items}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {"t": kind, "items": [walk(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if isinstance(value, _SCALARS):
            return {"t": "value", "v": value}
        raise ConfigError(
            f"{where}: cannot store a {type(value).__name__} (tensors, dicts, lists, tuples, "
            "str, int, float, bool and None only)"
        )

    tree = walk(state, [])
    return tensors, json.dumps(tree, allow_nan=True)


def unflatten(tree_json: str, get_tensor: Any, framework: str) -> Any:
    """Rebuild the structure, fetching each tensor with ``get_tensor(name)``."""
    try:
        tree = json.loads(tree_json)
    except ValueError as e:
        raise FormatError(f"the stored state structure is not valid JSON: {e}") from None

    def build(node: Any) -> Any:
        if not isinstance(node, dict) or "t" not in node:
            raise FormatError(f"malformed node in the stored state structure: {node!r:.80}")
        kind = node["t"]
        if kind == "tensor":
            t = get_tensor(node["name"])
            if node.get("np") and framework != "np" and hasattr(t, "numpy"):
                return t.numpy()
            return t
        if kind == "dict":
            return {k: build(v) for k, v in node["items"]}
        if kind == "list":
            return [build(v) for v in node["items"]]
        if kind == "tuple":
            return tuple(build(v) for v in node["items"])
        if kind == "value":
            return node["v"]
        raise FormatError(f"unknown node kind {kind!r} in the stored state structure")

    return build(tree)
