"""Saving and loading models without pickle.

scvi-tools 1.4.2 reads model files with ``torch.load(weights_only=False)``, which runs any code
a crafted file contains. armed_bio writes tensors to ``model.pt`` (read back with
``weights_only=True``) and every other attribute (registry, init parameters, history) to
``attributes.json``, so loading a model someone sent you cannot execute code.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

MODEL_FILE = "model.pt"
ATTRIBUTES_FILE = "attributes.json"
ADATA_FILE = "adata.h5ad"
FORMAT = "armed_bio.model/1"


def to_json(obj: Any) -> Any:
    """Encode numpy arrays/scalars, DataFrames and tuples into tagged JSON-able values."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        dtype = "object" if obj.dtype == object else obj.dtype.str
        return {"__ndarray__": to_json(obj.tolist()), "dtype": dtype}
    if isinstance(obj, pd.DataFrame):
        return {
            "__dataframe__": to_json(obj.to_dict(orient="list")),
            "index": to_json(obj.index.to_numpy()),
            "index_name": obj.index.name,
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return to_json(obj.detach().cpu().numpy())
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    raise TypeError(f"cannot save attribute of type {type(obj).__name__}: {obj!r}")


def from_json(obj: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tuple__" in obj:
        return tuple(from_json(v) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        return np.array(from_json(obj["__ndarray__"]), dtype=np.dtype(obj["dtype"]))
    if "__dataframe__" in obj:
        df = pd.DataFrame(from_json(obj["__dataframe__"]))
        df.index = from_json(obj["index"])
        df.index.name = obj["index_name"]
        return df
    return {k: from_json(v) for k, v in obj.items()}


def save_model(
    state_dict: dict[str, torch.Tensor],
    var_names: list[str],
    attributes: dict[str, Any],
    dir_path: str | os.PathLike,
    overwrite: bool,
) -> Path:
    """Write ``model.pt`` (tensors and names only) and ``attributes.json``."""
    path = Path(dir_path)
    if path.exists() and not overwrite and any(path.iterdir()):
        raise FileExistsError(
            f"{path} already exists and is not empty. Pass overwrite=True or another directory."
        )
    path.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "var_names": [str(v) for v in var_names],
    }
    torch.save(payload, path / MODEL_FILE)
    (path / ATTRIBUTES_FILE).write_text(json.dumps(to_json(attributes)))
    return path


def load_model_files(
    dir_path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """Read a directory written by :func:`save_model`; never unpickles arbitrary objects."""
    path = Path(dir_path)
    model_file, attr_file = path / MODEL_FILE, path / ATTRIBUTES_FILE
    if not model_file.exists() or not attr_file.exists():
        raise FileNotFoundError(
            f"{path} does not hold an armed_bio model (expected {MODEL_FILE} and "
            f"{ATTRIBUTES_FILE}). Save one with `model.save(dir_path)`."
        )
    try:
        payload = torch.load(model_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{model_file} contains Python objects other than tensors, so it was not loaded "
            "(loading it could run arbitrary code). Only load models saved by armed_bio from "
            "sources you trust."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{model_file} is not an armed_bio model file ({FORMAT}).")
    attributes = from_json(json.loads(attr_file.read_text()))
    return payload["model_state_dict"], payload["var_names"], attributes
