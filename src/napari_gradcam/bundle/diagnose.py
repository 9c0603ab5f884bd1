"""Why a model file cannot be loaded, in one sentence.

Checks before reading (the path is a readable, non-empty regular file), the refusal of pickles that
would need code (the globals named by ``torch.serialization.get_unsafe_globals_in_checkpoint``), and
the comparison of a file's tensors with the network its description asks for (class count, input
channels, another architecture's weights).  Nothing here runs code from a file.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Protocol, Sequence

from ..errors import shown  # noqa: F401 - re-exported for the bundle modules
from ..errors import ModelFileError


class ModelDescription(Protocol):
    """What the fit checks read of a :class:`~napari_gradcam.bundle.ModelConfig` (typed by its fields, so
    that this module needs nothing of ``bundle.core``, which imports it)."""

    architecture: str
    classes: Sequence[str]
    in_channels: int


# ----------------------------------------------------------------------------- text
def brief(value, limit: int = 120) -> str:
    """repr(value), cut to ``limit`` characters (a list of 100,000 class names stays readable)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 5] + " ...]" if isinstance(value, list) else text[:limit] + "..."


def shape_text(shape) -> str:
    return " x ".join(str(int(n)) for n in shape) or "a scalar"


def first_line(err: BaseException, limit: int = 200) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


# ----------------------------------------------------------------------------- the path
def check_path(path: Path) -> None:
    """Exists, is a regular non-empty file and can be opened (no read from pipes or devices)."""
    try:
        path.stat()
    except FileNotFoundError:
        pass  # said below
    except (OSError, ValueError) as e:  # a name too long, a null byte, a loop of links...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ModelFileError(f"The model path {shown(str(path))[:200]} cannot be used ({reason}).") from None
    if not path.exists():
        raise ModelFileError(f"No model file at {shown(path)}.")
    if path.is_dir():
        raise ModelFileError(f"{shown(path)} is a folder, not a model file.")
    if not path.is_file():
        raise ModelFileError(f"{shown(path)} is not a regular file (a device, pipe or socket), not a model file.")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{shown(path)} is empty (0 bytes), not a model file.")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ModelFileError(f"{shown(path.name)} cannot be read ({e.strerror or type(e).__name__}).") from None


def check_archive(path: Path) -> None:
    """Refuse a zip that is no ``torch.save`` state dict: a decompression bomb or a TorchScript program."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelFileError(f"{shown(path.name)} is a damaged archive ({e}).") from None
    expanded = sum(i.file_size for i in infos)
    if expanded > 4 * path.stat().st_size + (16 << 20):  # torch.save stores entries uncompressed
        raise ModelFileError(
            f"{shown(path.name)} is a compressed archive that would expand to {expanded / 2**30:.1f} GiB "
            "in memory; torch.save never writes such files, so it was not loaded."
        )
    if any(i.filename.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for i in infos):
        raise ModelFileError(
            f"{path.name} is a TorchScript program, not a state dict; napari-gradcam loads weights only "
            "(save model.state_dict() or use a .safetensors bundle)."
        )


# ----------------------------------------------------------------------------- pickles
def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The globals beyond tensors that unpickling ``path`` would import, most suspicious first.

    A ``torch.save`` archive is disassembled by torch itself (nothing imported or run); for a legacy or
    raw pickle, torch's weights-only unpickler names the global it stopped at in its error.
    """
    import torch

    names: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # noqa: BLE001 - a damaged archive: no names, the sentence says the rest
            names = []
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    return sorted(set(names), key=lambda n: (n.split(".")[0] in ("torch", "collections", "_codecs"), n))


def _is_pickle(path: Path) -> bool:
    """Starts like a pickle (PROTO opcode and a protocol number) or is a zip with a data.pkl."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def refused_pickle(path: Path, error: Exception) -> ModelFileError:
    """The sentence for a file ``torch.load(weights_only=True)`` refused with ``error``."""
    suspects = _unsafe_globals(path, error)
    if suspects or _is_pickle(path):
        named = f"it refers to {suspects[0]}: " if suspects else ""
        return ModelFileError(
            f"{path.name} holds Python objects beyond tensors ({named}a pickled model or custom code); it was not "
            "loaded because unpickling it could run code: save model.state_dict() or a .safetensors bundle."
        )
    return ModelFileError(f"{path.name} is not a readable PyTorch weights file (not a state dict saved with "
                          "torch.save).")


# ----------------------------------------------------------------------------- fit
def check_fit(path: Path, config: ModelDescription, tensors: dict, expected: dict, head: str | None,
              first: str | None) -> None:
    """Compare the file's ``tensors`` with the ``expected`` state dict of the network ``config``
    describes (built on the meta device: no memory) and say in one sentence what does not fit: class
    count, input channels, or the architecture itself (missing, unexpected, reshaped or integer weights).
    ``head`` and ``first`` name the head and the first convolution."""
    name, n = path.name, len(config.classes)
    head_w = tensors.get(f"{head}.weight") if head else None
    first_w = tensors.get(f"{first}.weight") if first else None
    if set(tensors) == set(expected):
        if head_w is not None and head_w.ndim in (2, 4) and head_w.shape[0] != n:
            raise ModelFileError(
                f"The weights in {name} classify into {head_w.shape[0]} classes, but the model is described with "
                f"{n} classes ({brief(config.classes, 80)})."
            )
        if first_w is not None and first_w.ndim == 4 and first_w.shape[1] != config.in_channels:
            raise ModelFileError(
                f"The weights in {name} take {first_w.shape[1]} input channel(s), but the model is described with "
                f"{config.in_channels}."
            )
    problems = _fit_problems(tensors, expected)
    if problems:
        missing_or_extra = set(tensors) != set(expected)
        other = guess_architecture(tensors) if missing_or_extra else None
        hint = f"; they look like {other} weights" if other and other != config.architecture else ""
        raise ModelFileError(
            f"The weights in {name} do not fit a {config.architecture} with {n} classes and "
            f"{config.in_channels} input channel(s): {'; '.join(problems)}{hint}."
        )


def _fit_problems(tensors: dict, expected: dict) -> list[str]:
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    reshaped = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    retyped = [k for k in expected if k in tensors and expected[k].is_floating_point()
               and not tensors[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its weights are missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} are not part of it (e.g. {brief(unexpected[0], 80)})")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} have other shapes (e.g. {k} is {shape_text(tensors[k].shape)} in the file, "
                        f"{shape_text(expected[k].shape)} in the model)")
    if retyped:
        problems.append(f"{len(retyped)} are not floating point (e.g. {retyped[0]} is {tensors[retyped[0]].dtype})")
    return problems


def guess_architecture(tensors: dict) -> str | None:
    """The registered architecture whose weight names are exactly the file's (built on the meta device)."""
    import torch

    from .. import models

    keys = set(tensors)
    for arch in models.list_architectures():
        try:
            with torch.device("meta"):
                if set(models.build_network(arch, 2, 1).state_dict()) == keys:
                    return arch
        except Exception:  # noqa: BLE001 - a hint only
            continue
    return None


def fit_error(path: Path, config: ModelDescription, err: RuntimeError) -> ModelFileError:
    """Turn load_state_dict's long error into one sentence."""
    detail = ""
    for line in str(err).splitlines():
        line = line.strip()
        if line.startswith("size mismatch") or line.startswith(("Missing key", "Unexpected key")):
            detail = line.rstrip(".")[:200]
            break
    return ModelFileError(
        f"The weights in {path.name} do not fit a {config.architecture} with {len(config.classes)} classes and "
        f"{config.in_channels} input channel(s){': ' + detail if detail else ''}."
    )
