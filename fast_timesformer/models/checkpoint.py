"""The generic checkpoint reader and loader: formats, unwrapping, damage detection, :class:`LoadReport`.

It never imports a model: a model class hands it its :class:`CheckpointLayout` (how to rename a foreign
state dict and read its configuration; TimeSformer's, the Hugging Face and official layouts, lives beside
the model in :mod:`.timesformer_layouts`). ``TimeSformer.from_pretrained(path, strict=True, **overrides)``
delegates to :func:`load_pretrained`:

1. **Read** the tensors without running foreign code: ``*.safetensors`` with the safetensors package,
   everything else with ``torch.load(weights_only=True)``. A file that only arbitrary unpickling could
   read (a pickled config object, an ``argparse.Namespace``...) is refused with
   :class:`UnsafeCheckpointError`, which says how to extract the weights from a trusted copy.
2. **Rename** to the official names (this package's module names, REFERENCE.md §2): Hugging Face keys
   (``timesformer.encoder.layer.i.attention.attention.qkv`` ...) are mapped, the official ``model.``
   prefix (and a DDP ``module.`` prefix) is stripped.
3. **Configure**: a Hugging Face ``config.json`` gives the architecture; for an official file it is read
   from the tensor shapes (width, depth, patch, frames, classes, scheme) and from keyword arguments for
   what shapes cannot say (``heads``, default ``dim // 64`` as in every ViT size). Keyword arguments
   override either (e.g. ``num_frames=16`` or ``image_size=448``).
4. **Load**: position and time embeddings of another grid or frame count are resampled (2-D bicubic and
   linear, see :mod:`.resample`); every key that is missing, unexpected or of the wrong shape goes into
   a :class:`LoadReport` (``model.load_report``). ``strict=True`` raises :class:`CheckpointMismatchError`
   listing them; ``strict=False`` loads what fits and warns (:class:`CheckpointWarning`). Never silent.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..devices import check_device
from ..errors import CheckpointConfigError, CorruptCheckpointError, FastTimesformerError, NonFiniteError
from ..errors import first_line as _first_line
from ..finite import describe, nonfinite_entries
from .resample import resample_pos_embed, resample_time_embed, to_hw

__all__ = [
    "LoadReport", "CheckpointMismatchError", "CheckpointWarning", "UnsafeCheckpointError", "CheckpointLayout",
    "from_pretrained", "load_pretrained", "load_state_dict_into", "read_checkpoint", "safe_torch_load",
    "unwrap_state_dict", "set_default_model", "TRAIN_FORMAT",
]


@dataclass(frozen=True)
class CheckpointLayout:
    """How one model family reads foreign checkpoints; the model class hands it to the loader
    (``model_cls.checkpoint_layout``), so this module never imports a model.

    ``convert(state) -> (state in the model's names, format name)``: an unwrapped state dict renamed.
    ``configure(state, hf_config, extra, overrides, path) -> (config, notes, checkpoint_config,
    layer_norm_eps)``: the constructor arguments (``overrides`` win), notes for the report, the
    checkpoint's own image/patch sizes when they matter for resampling (or None), and a LayerNorm eps to
    set (or None). A model class without a layout reads only ``fast-timesformer train`` checkpoints.
    """

    name: str
    convert: Callable[[Mapping[str, torch.Tensor]], Tuple[Dict[str, torch.Tensor], str]]
    configure: Callable[..., Tuple[Dict[str, Any], List[str], Optional[dict], Optional[float]]]


_DEFAULT_MODEL: list = []  # the class load_pretrained builds without model_cls (TimeSformer registers itself)


def set_default_model(model_cls) -> None:
    """The model class :func:`load_pretrained` and :func:`read_checkpoint` use when given none."""
    _DEFAULT_MODEL[:] = [model_cls]


def _default_model():
    # importing this module imports the fast_timesformer.models package first, whose TimeSformer registers
    return _DEFAULT_MODEL[0]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

class CheckpointMismatchError(FastTimesformerError, RuntimeError):
    """A strict load found missing, unexpected or mis-shaped keys; ``.report`` holds them all (a user error:
    the command line prints it without a traceback)."""

    def __init__(self, report: "LoadReport"):
        self.report = report
        # the first line alone (what a log or the command line shows first) names the file and the counts
        kinds = [(len(keys), what) for what, keys in (("missing", report.missing), ("unexpected", report.unexpected),
                                                       ("mis-shaped", report.mismatched)) if keys]
        counts = ", ".join(f"{n} {what}" for n, what in kinds) + (" keys" if sum(n for n, _ in kinds) > 1 else " key")
        head = f"{report.source}: the checkpoint" if report.source else "the state dict"
        super().__init__(f"{head} does not fit the model (strict=True): {counts}\n{report.describe()}\n"
                         "Pass strict=False to load what fits (the report is then attached to the model as "
                         "model.load_report and a CheckpointWarning is issued).")


class CheckpointWarning(UserWarning):
    """A non-strict load left keys out; the message lists them."""


class UnsafeCheckpointError(FastTimesformerError, ValueError):
    """The file is a well-formed pickle naming Python objects (globals) that only arbitrary (code-running)
    unpickling would rebuild. A damaged file is never described so: that is :class:`CorruptCheckpointError`."""


@dataclass
class LoadReport:
    """What a load did. ``ok`` is True when every model tensor was filled and every checkpoint tensor used.

    ``resampled``/``mismatched`` hold ``(key, checkpoint_shape, model_shape)``; ``backend_state`` holds
    backend buffers (e.g. Performer's random features) that no softmax checkpoint carries: they keep
    their initial values and do not make the load incomplete. ``kept_for_backend`` holds the checkpoint's
    state of a backend the model does not run now (e.g. trained fastformer parameters loaded into a
    ``regular`` model): each layer keeps it and its ``set_backend`` to that backend uses it.
    """

    source: str = ""
    format: str = ""
    config: Dict[str, Any] = field(default_factory=dict)
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    resampled: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    backend_state: List[str] = field(default_factory=list)
    kept_for_backend: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def show(name, item):
            if name == "mismatched":
                return f"{item[0]} {tuple(item[1])} in the checkpoint, {tuple(item[2])} in the model"
            if name == "resampled":
                return f"{item[0]} {tuple(item[1])} -> {tuple(item[2])}"
            return item

        def listing(name, items):
            shown = [show(name, it) for it in items[:limit]]
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"  {name} ({len(items)}): {', '.join(shown)}{more}"

        lines = [f"{self.format or 'checkpoint'} {self.source}: {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched", "resampled", "backend_state", "kept_for_backend"):
            items = getattr(self, name)
            if items:
                lines.append(listing(name.replace("_", " "), items))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = describe


# ---- reading files ---------------------------------------------------------------------------------

def safe_torch_load(path: PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; refuses files that need more.

    torch raises ``UnpicklingError`` both for a file that names a Python object it will not rebuild and for
    plain garbage, so a failure is diagnosed from the file itself (:func:`_diagnose_torch_file`): only a
    well-formed pickle that names the refused global raises :class:`UnsafeCheckpointError` (naming the
    object and how to extract the weights from a copy you trust); anything else, a truncated zip archive,
    random bytes, an empty or a text file, raises :class:`CorruptCheckpointError` saying what is wrong.
    Nothing from the file is ever executed.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CorruptCheckpointError(path, "the file is empty (0 bytes)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - every failure is diagnosed below, none is swallowed
        unsafe_global, problem = _diagnose_torch_file(path, e)
    else:
        bad = _zip_crc_failure(path)  # torch's zip reader does not check the members' CRC-32
        if bad is not None:
            raise CorruptCheckpointError(path, f"a damaged PyTorch zip archive: member {bad!r} fails its CRC "
                                               "check (its bytes changed after torch.save wrote them)")
        return loaded
    if unsafe_global is None:
        raise CorruptCheckpointError(path, problem) from None
    raise UnsafeCheckpointError(
        f"{path} holds a pickled Python object ({unsafe_global}) besides tensors. Rebuilding it would need "
        "arbitrary unpickling, which runs whatever code the file names, so fast_timesformer refuses it (it "
        "loads with torch.load(weights_only=True)). Official TimeSformer files keep cfg as a YAML string and "
        "load fine; this one stores an object, e.g. a config or argparse.Namespace. If you trust the "
        "file, extract the weights once and load the result:\n"
        "    import torch\n"
        f"    ck = torch.load({str(path)!r}, map_location='cpu', weights_only=False)  # runs the file's code\n"
        "    torch.save({'model_state': ck['model_state']}, 'weights_only.pth')\n"
        "(or torch.serialization.add_safe_globals([...]) for a class you have checked).") from None


def _zip_crc_failure(path: Path) -> Optional[str]:
    """The first member of a zip archive whose CRC-32 does not match its bytes (None: all match, or not a
    zip file). Reads the whole file once (zlib's CRC runs at GB/s)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"? ({_first_line(e)})"


def _pickle_globals(stream) -> List[str]:
    """The globals a pickle stream names, parsing its opcodes without running anything; raises
    ``ValueError`` (or ``EOFError``...) when the stream is not one complete, well-formed pickle."""
    import pickletools

    names, strings = [], []
    stopped = False
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str):
            strings.append(arg)
        stopped = op.name == "STOP"
    if not stopped:
        raise ValueError("the pickle stream ends without STOP")
    return names


def _refused_global(error: BaseException) -> Optional[str]:
    """The global torch's weights-only unpickler refused, from its message (None if that is not the error)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(error)) or re.findall(
        r"GLOBAL ([\w.]+) was not an allowed global", str(error))
    return found[0] if found else None


def _diagnose_torch_file(path: Path, error: BaseException) -> Tuple[Optional[str], str]:
    """Why ``torch.load(weights_only=True)`` failed: ``(refused global, "")`` when the file is a well-formed
    pickle naming that global (unsafe, not damaged), else ``(None, what is wrong with the file)``."""
    import zipfile

    refused = _refused_global(error)
    with open(path, "rb") as f:
        head = f.read(64)
    if zipfile.is_zipfile(path):  # torch.save's format since 1.6: a zip archive with <name>/data.pkl
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()  # reads every member and checks its CRC
                if bad is not None:
                    return None, f"a damaged PyTorch zip archive: member {bad!r} fails its CRC check"
                pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not pkls:
                    return None, "a zip archive without data.pkl: not a file written by torch.save"
                data = zf.read(pkls[0])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            return None, f"a truncated or damaged PyTorch zip archive ({_first_line(e)})"
        import io

        try:
            names = _pickle_globals(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001
            return None, f"a PyTorch zip archive whose pickle (data.pkl) is damaged ({_first_line(e)})"
        if refused is not None and refused in names:
            return refused, ""
        return None, f"a PyTorch zip archive that torch cannot read ({_first_line(error)})"
    if head.startswith(b"\x80") or refused is not None:
        # a legacy torch.save file (a sequence of pickles: magic number, protocol, system info, the object,
        # then raw storages) or a plain pickle: the refused global must sit in a complete, well-formed pickle
        names, damage = [], None
        with open(path, "rb") as f:
            for _ in range(4):
                try:
                    names += _pickle_globals(f)
                except Exception as e:  # noqa: BLE001
                    damage = e
                    break
        if refused is not None and refused in names:
            return refused, ""
        if damage is not None:
            return None, f"a truncated or damaged pickle / legacy PyTorch file ({_first_line(damage)})"
        return None, f"a legacy PyTorch file that torch cannot read ({_first_line(error)})"
    if head.startswith(b"PK"):
        return None, "a truncated or damaged zip archive (a torch.save file cut short?)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut by the 64-byte window is still text
        text = head[:e.start].decode("utf-8") if e.start >= 16 else None
    if text and text.strip() and all(c.isprintable() or c in "\r\n\t" for c in text):
        snippet = text.strip().splitlines()[0][:40]
        return None, f"a text file (it starts with {snippet!r}), not a PyTorch checkpoint"
    return None, ("not a PyTorch checkpoint: neither a zip archive written by torch.save nor a pickle "
                  f"(first bytes {head[:8].hex(' ')})")


def _read_tensor_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return safe_torch_load(path)


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.is_file() and path.stat().st_size == 0:
        raise CorruptCheckpointError(path, "the file is empty (0 bytes)")
    try:
        return load_file(str(path), device="cpu")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: the header or the data is damaged
        raise CorruptCheckpointError(path, f"not a readable safetensors file, truncated or damaged "
                                           f"({_first_line(e)})") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(path, f"{what} is not valid JSON ({_first_line(e)})") from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(path, f"{what} holds a JSON {type(value).__name__}, expected an object")
    return value


def _read_hf_weights(folder: Path) -> Dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return _read_tensor_file(folder / name)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = _read_json(folder / index, "the shard index").get("weight_map")
            if not isinstance(weight_map, Mapping) or not weight_map:
                raise CorruptCheckpointError(folder / index, "the shard index has no 'weight_map' of tensor "
                                                             "name -> shard file")
            state: Dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise FileNotFoundError(f"{folder / index} names the shard {shard!r}, which is not in {folder}")
                state.update(_read_tensor_file(folder / shard))
            return state
    raise FileNotFoundError(f"{folder} has a config.json but no weights: expected model.safetensors, "
                            "pytorch_model.bin or a sharded *.index.json")


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: ``model_state`` (official), ``state_dict``, ``model``,
    or the object itself; then the ``model.``/``module.`` prefix is stripped when every key has it."""
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(source, f"holds a {type(obj).__name__}, expected a dict of tensors or a "
                                             "dict with 'model_state'")
    for key in ("model_state", "state_dict", "model", "module"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CorruptCheckpointError(source, f"holds no tensors (top-level keys: {sorted(map(str, obj))[:10]})")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


#: the ``format`` of a checkpoint written by ``fast-timesformer train`` (fast_timesformer/train/checkpoint.py)
TRAIN_FORMAT = "fast_timesformer.train"
_TRAIN_META_KEY = "fast_timesformer"


def _train_metadata(path: Path) -> Optional[dict]:
    """The JSON metadata of a ``fast-timesformer train`` checkpoint (a safetensors file whose metadata has
    a ``"fast_timesformer"`` entry), or None for any other safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_TRAIN_META_KEY)
    except Exception as e:  # noqa: BLE001 - the tensors were just read, so this is damage in the header
        raise CorruptCheckpointError(path, f"unreadable safetensors metadata ({_first_line(e)})") from None
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(path, f"the {_TRAIN_META_KEY!r} metadata is not valid JSON "
                                           f"({_first_line(e)})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if not (isinstance(fmt, str) and fmt.startswith(TRAIN_FORMAT + "/")):
        raise CorruptCheckpointError(path, f"the {_TRAIN_META_KEY!r} metadata has format {fmt!r}, not a "
                                           f"{TRAIN_FORMAT}/<version> training checkpoint")
    if fmt != TRAIN_FORMAT + "/1":
        raise CheckpointConfigError(f"{path}: a training checkpoint of format {fmt!r}, which this version of "
                                    f"fast_timesformer does not read (it reads {TRAIN_FORMAT}/1)")
    return meta


def _is_official_release(raw: Any) -> bool:
    """The facebookresearch/TimeSformer layout: ``{"model_state": {...}, "cfg": <YAML string>, ...}``."""
    return isinstance(raw, Mapping) and isinstance(raw.get("model_state"), Mapping) and isinstance(
        raw.get("cfg"), str)


def _read_any(path: PathLike, convert=None) -> Tuple[Dict[str, torch.Tensor], Optional[dict], str, dict]:
    """:func:`read_checkpoint` plus what else the file records: ``{"train": metadata}`` for a
    ``fast-timesformer train`` checkpoint, ``{"official_release": True}`` for the official layout.
    ``convert``: a layout's renaming (:attr:`CheckpointLayout.convert`); None keeps the names (format
    ``"state_dict"``)."""
    path = Path(path)
    hf_config = None
    extra: dict = {}
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} is a folder without config.json: not a Hugging Face model folder")
        hf_config = _read_json(cfg_file, "config.json")
        raw = _read_hf_weights(path)
    elif path.is_file():
        raw = _read_tensor_file(path)
        if path.suffix == ".safetensors":
            meta = _train_metadata(path)
            if meta is not None:  # model.<name>, optim.*, rng.*, scaler.*: only the model's tensors
                state = {k[len("model."):]: v for k, v in raw.items() if k.startswith("model.")}
                if not state:
                    raise CorruptCheckpointError(path, "a fast-timesformer train checkpoint without model.* "
                                                       "tensors")
                return state, None, TRAIN_FORMAT, {"train": meta}
        if path.with_name("config.json").is_file() and path.name in ("model.safetensors", "pytorch_model.bin"):
            hf_config = _read_json(path.with_name("config.json"), "config.json")
        extra["official_release"] = _is_official_release(raw)
    else:
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = unwrap_state_dict(raw, str(path))
    if convert is None:
        return state, hf_config, "state_dict", extra
    state, fmt = convert(state)
    return state, hf_config, fmt, extra


def read_checkpoint(path: PathLike, layout: Optional[CheckpointLayout] = None
                    ) -> Tuple[Dict[str, torch.Tensor], Optional[dict], str]:
    """Read ``path`` -> ``(state_dict with official names, hf_config or None, format)``.

    ``path``: a Hugging Face folder (``config.json`` + weights, or shards), one ``.pyth``/``.pth``/``.pt``/
    ``.bin``/``.safetensors`` file in official or Hugging Face naming, or a ``fast-timesformer train``
    checkpoint (format ``"fast_timesformer.train"``: the ``model.*`` tensors, names as this package's).
    A damaged file raises :class:`~fast_timesformer.errors.CorruptCheckpointError` naming it.
    ``layout``: the naming to convert to (default: the default model's, TimeSformer's official names).
    """
    layout = layout if layout is not None else _default_model().checkpoint_layout
    state, hf_config, fmt, _ = _read_any(path, layout.convert)
    return state, hf_config, fmt


# ---- loading into a model --------------------------------------------------------------------------

def _model_config(model: nn.Module) -> Dict[str, Any]:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return dict(vars(cfg))


def _grid_of(config: Mapping[str, Any], num_patches: int) -> Tuple[int, int]:
    if "image_size" in config and "patch_size" in config:
        ih, iw = to_hw(config["image_size"], "image_size")
        ph, pw = to_hw(config["patch_size"], "patch_size")
        if (ih // ph) * (iw // pw) == num_patches:
            return ih // ph, iw // pw
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot tell the patch grid of {num_patches} positions: give image_size and patch_size")
    return side, side


def _layer_without_core(model: nn.Module, key: str):
    """``(layer, backend, key within the core)`` when ``key`` is ``<layer>.cores.<backend>.<key>`` for a
    DividedAttention layer of ``model`` that has no core for that registered backend now; else None."""
    from ..attention import DividedAttention
    from ..backends import list_backends

    path, sep, rest = key.partition(".cores.")
    if not sep:
        path, sep, rest = ("", "cores.", key[len("cores."):]) if key.startswith("cores.") else ("", "", "")
    backend, _, inner = rest.partition(".")
    if not sep or not inner or backend not in list_backends():
        return None
    try:
        layer = model.get_submodule(path) if path else model
    except AttributeError:
        return None
    if not isinstance(layer, DividedAttention) or backend in layer.cores:
        return None
    return layer, backend, inner


def _is_backend_buffer(key: str, buffers: set) -> bool:
    return ".cores." in f".{key}" and key in buffers


def load_state_dict_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True,
                         source: str = "", fmt: str = "state_dict",
                         checkpoint_config: Optional[Mapping[str, Any]] = None,
                         notes: Optional[List[str]] = None) -> LoadReport:
    """Load an official-named state dict into ``model``, resampling ``pos_embed``/``time_embed`` to the
    model's grid and frame count. Returns a :class:`LoadReport` (also set as ``model.load_report``).

    ``checkpoint_config``: the checkpoint's ``image_size``/``patch_size`` when its grid is not square;
    ``notes``: lines for the report (what the caller assumed).
    ``strict=True`` raises :class:`CheckpointMismatchError` before changing the model if anything does not
    fit; ``strict=False`` loads what fits and warns with the list of what did not. Weights holding a NaN or an
    infinity raise :class:`~fast_timesformer.errors.NonFiniteError` naming ``source``, whatever ``strict``.
    """
    bad = nonfinite_entries(state)
    if bad:  # before anything is loaded: never a model that predicts NaN from a damaged release
        raise NonFiniteError(str(source), [n for n, _ in bad], f"{source or 'the state dict'}: the checkpoint's weights "
                                                                f"are not finite ({describe(bad)}); it cannot be used")
    report = LoadReport(source=str(source), format=fmt, config=_model_config(model), notes=list(notes or []))
    own = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    to_load: Dict[str, torch.Tensor] = {}
    kept: List[Tuple[Any, str, str, torch.Tensor]] = []
    for key, value in state.items():
        if key not in own:
            target = _layer_without_core(model, key)
            if target is not None:
                kept.append((*target, value))
                report.kept_for_backend.append(key)
            else:
                report.unexpected.append(key)
            continue
        target = own[key]
        resizable = value.shape != target.shape and value.ndim == 3 and value.shape[-1] == target.shape[-1]
        if key == "pos_embed" and resizable:
            old = _grid_of(checkpoint_config or {}, value.shape[1] - 1)
            new = _grid_of(report.config, target.shape[1] - 1)
            value = resample_pos_embed(value, new, old_hw=old, num_prefix_tokens=1)
            report.resampled.append((key, tuple(state[key].shape), tuple(value.shape)))
        elif key == "time_embed" and resizable:
            value = resample_time_embed(value, target.shape[1])
            report.resampled.append((key, tuple(state[key].shape), tuple(value.shape)))
        if value.shape != target.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            continue
        to_load[key] = value
        report.loaded.append(key)
    for key in own:
        if key not in to_load and key not in state:
            (report.backend_state if _is_backend_buffer(key, buffers) else report.missing).append(key)
    for key, old, new in report.resampled:
        logger.info("resampled %s from %s to %s", key, old, new)
    if any(".cores." in f".{k}" for k in report.missing):
        report.notes.append("the missing backend parameters belong to an attention backend with weights of its "
                            "own (e.g. fastformer), which no softmax checkpoint has: load with the default "
                            "backend and call model.set_backend(...), or pass strict=False")
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
    for layer, backend, key, value in kept:
        layer.keep_backend_state(backend, key, value)
    if kept:
        names = sorted({backend for _, backend, _, _ in kept})
        report.notes.append(f"{len(kept)} tensors of backend(s) {names} that the model does not run now are kept "
                            f"in its layers: set_backend({names[0]!r}) uses them")
    if report.backend_state:
        report.notes.append(f"{len(report.backend_state)} backend buffers (e.g. random features) keep their "
                            "initial values: a softmax checkpoint has none")
    if not report.ok:
        warnings.warn(f"checkpoint loaded with strict=False, incompletely:\n{report.describe()}",
                      CheckpointWarning, stacklevel=3)
    model.load_report = report
    return report


def _train_config(path: Path, meta: dict, model_cls) -> Dict[str, Any]:
    """Constructor arguments recorded by ``fast-timesformer train`` (``extra.model_spec``)."""
    spec = (meta.get("extra") or {}).get("model_spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kwargs"), Mapping):
        raise CheckpointConfigError(f"{path}: a training checkpoint that records no model_spec, so the model "
                                    "cannot be rebuilt from it")
    cls_name = spec.get("class", "TimeSformer")
    if cls_name != model_cls.__name__:
        raise CheckpointConfigError(f"{path} holds a {cls_name} (written by fast-timesformer train): load it with "
                                    f"{cls_name}.from_pretrained(path), not {model_cls.__name__}.from_pretrained")
    return dict(spec["kwargs"])  # every constructor argument, the registered configuration's included


def load_pretrained(path: PathLike, *, strict: bool = True, model_cls=None, device=None, **overrides) -> nn.Module:
    """Build a model from a checkpoint (see the module docstring); ``overrides`` are constructor
    arguments that replace what the checkpoint says (``num_frames``, ``image_size``, ``backend``, ...).
    ``device``: where the model goes after loading (checked first: a device this machine does not have
    raises :class:`~fast_timesformer.errors.DeviceUnavailableError`).
    The model is returned in eval mode with ``model.load_report`` set."""
    if model_cls is None:
        model_cls = _default_model()
    if device is not None:
        device = check_device(device)
    layout: Optional[CheckpointLayout] = getattr(model_cls, "checkpoint_layout", None)
    state, hf_config, fmt, extra = _read_any(path, None if layout is None else layout.convert)
    notes: List[str] = []
    ckpt_config = None  # the grid is read from pos_embed (square) unless the checkpoint says otherwise
    eps = None
    train_meta = extra.get("train")
    if train_meta is None and layout is None:
        default = _default_model()
        _, fmt = default.checkpoint_layout.convert(state)
        raise CheckpointConfigError(f"{path} is a {fmt} {default.__name__} checkpoint, not a {model_cls.__name__}: "
                                    f"{model_cls.__name__}.from_pretrained reads checkpoints written by "
                                    f"fast-timesformer train; load this one with {default.__name__}.from_pretrained")
    if train_meta is not None:
        config = _train_config(Path(path), train_meta, model_cls)
        ckpt_config = dict(config)
        config.update(overrides)
    else:
        config, notes, ckpt_config, eps = layout.configure(state, hf_config, extra, dict(overrides), path)
    model = model_cls(**config)
    if eps is not None and eps != 1e-6:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = eps
        notes.append(f"LayerNorm eps set to {eps} from config.json")
    report = load_state_dict_into(model, state, strict=strict, source=str(path), fmt=fmt,
                                  checkpoint_config=ckpt_config, notes=notes)
    if hf_config is not None and hf_config.get("id2label"):
        report.meta["id2label"] = {int(k): v for k, v in hf_config["id2label"].items()}
    if train_meta is not None:
        report.meta.update({k: train_meta.get(k) for k in ("classes", "step", "epoch")})
        report.meta["task"] = (train_meta.get("extra") or {}).get("task")
    if device is not None:
        model.to(device)
    model.eval()
    return model


def from_pretrained(cls, path: PathLike, *, strict: bool = True, device=None, **overrides) -> nn.Module:
    """``cls.from_pretrained(path, strict=True, device=None, **overrides)``: :func:`load_pretrained`
    building ``cls``."""
    return load_pretrained(path, strict=strict, model_cls=cls, device=device, **overrides)
