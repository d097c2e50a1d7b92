"""Saving and loading models without pickle.

scvi-tools 1.4.2 reads model files with ``torch.load(weights_only=False)``, which runs any code
a crafted file contains. armed_bio writes tensors to ``model.pt`` (read back with
``weights_only=True``) and every other attribute (registry, init parameters, history) to
``attributes.json``, so loading a model someone sent you cannot execute code. ``model.pt``
records the file format's version and the armed_bio version that wrote it. A save writes a
temporary folder and renames it into place, so an interrupted save never leaves a half-written
model.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

MODEL_FILE = "model.pt"
ATTRIBUTES_FILE = "attributes.json"
ADATA_FILE = "adata.h5ad"
FORMAT_VERSION = 1
FORMAT = f"armed_bio.model/{FORMAT_VERSION}"
#: What a saved model's folder may hold; a save replaces the folder as a whole.
MODEL_FOLDER_FILES = (MODEL_FILE, ATTRIBUTES_FILE, ADATA_FILE)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_saves(path: Path) -> None:
    """Remove temporary folders that interrupted saves to ``path`` left behind.

    Only folders of processes no longer running are removed; a concurrent save is left alone.
    """
    for leftover in path.parent.glob(f".{path.name}.saving-*"):
        pid = leftover.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass a folder path to save the model in.")
    if not path.exists():
        return
    contents = sorted(p.name for p in path.iterdir())
    if contents and not overwrite:
        raise FileExistsError(
            f"{path} already exists and is not empty. Pass overwrite=True or another directory."
        )
    foreign = [name for name in contents if name not in MODEL_FOLDER_FILES]
    if foreign:
        raise FileExistsError(
            f"{path} holds files that are not part of a saved model ({foreign}). A save "
            "replaces the whole folder, so they would be lost: move them, or save to another "
            "folder."
        )


def save_model(
    state_dict: dict[str, torch.Tensor],
    var_names: list[str],
    attributes: dict[str, Any],
    dir_path: str | os.PathLike,
    overwrite: bool,
    write_more: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model.pt`` (tensors and names only) and ``attributes.json``, atomically.

    Everything is written into a temporary folder beside ``dir_path`` (``write_more(folder)``
    adds further files, such as the AnnData), which then replaces ``dir_path`` by renames. An
    interrupted save leaves the previous model in place (or, killed between the two renames,
    in a ``.<name>.old-*`` folder beside it, which :func:`load_model_files` points to).
    """
    from .. import __version__

    path = Path(dir_path)
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_saves(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = path.parent / f".{path.name}.saving-{tag}"
    staging.mkdir()
    try:
        payload = {
            "format": FORMAT,
            "armed_bio_version": __version__,
            "model_state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "var_names": [str(v) for v in var_names],
        }
        torch.save(payload, staging / MODEL_FILE)
        (staging / ATTRIBUTES_FILE).write_text(json.dumps(to_json(attributes)))
        if write_more is not None:
            write_more(staging)
        if path.exists():
            retired = path.parent / f".{path.name}.old-{tag}"
            os.rename(path, retired)
            os.rename(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _format_version(tag: Any) -> int | None:
    """The version number of an ``armed_bio.model/<n>`` tag, or None for anything else."""
    prefix = FORMAT.rsplit("/", 1)[0] + "/"
    if isinstance(tag, str) and tag.startswith(prefix) and tag[len(prefix) :].isdigit():
        return int(tag[len(prefix) :])
    return None


def load_model_files(
    dir_path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """Read a directory written by :func:`save_model`; never unpickles arbitrary objects."""
    path = Path(dir_path)
    model_file, attr_file = path / MODEL_FILE, path / ATTRIBUTES_FILE
    if not model_file.exists() or not attr_file.exists():
        retired = sorted(path.parent.glob(f".{path.name}.old-*"))
        hint = (
            f" A save to it was interrupted; the previous model is in {retired[-1]}: rename "
            f"that folder to {path.name}."
            if retired and not path.exists()
            else " Save one with `model.save(dir_path)`."
        )
        raise FileNotFoundError(
            f"{path} does not hold an armed_bio model (expected {MODEL_FILE} and "
            f"{ATTRIBUTES_FILE}).{hint}"
        )
    try:
        payload = torch.load(model_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{model_file} contains Python objects other than tensors, so it was not loaded "
            "(loading it could run arbitrary code). Only load models saved by armed_bio from "
            "sources you trust."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"{model_file} is truncated or corrupted ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}), e.g. by an interrupted copy or download. "
            "Copy the model folder again from its source, or save the model again."
        ) from err
    tag = payload.get("format") if isinstance(payload, dict) else None
    version = _format_version(tag)
    if version is None:
        raise ValueError(f"{model_file} is not an armed_bio model file ({FORMAT}).")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{model_file} has model-file format {version}, written by armed_bio "
            f"{payload.get('armed_bio_version', 'unknown')}; this armed_bio reads formats up to "
            f"{FORMAT_VERSION}. Upgrade armed_bio (`pip install -U armed-bio`) to load it."
        )
    try:
        attributes = from_json(json.loads(attr_file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{attr_file} is truncated or corrupted ({err}). Copy the model folder again from "
            "its source, or save the model again."
        ) from err
    return payload["model_state_dict"], payload["var_names"], attributes
