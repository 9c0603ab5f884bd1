"""``napari-gradcam train``: train a classifier from a folder of class subfolders."""

from __future__ import annotations

import sys
from pathlib import Path

import argparse

from ._common import MAX_COUNT, PROG, GradCamError, _fmt_kw, add_quiet, check_outputs, drive, shown


def config_from_args(args):
    """The TrainConfig of parsed arguments: every option given (or defaulted) on the command line."""
    from dataclasses import fields

    from ..train import TrainConfig

    values = {}
    for f in fields(TrainConfig):
        if f.metadata.get("cli", True) and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = None if f.metadata.get("none_if_zero") and value == 0 else value
    return TrainConfig(data_dir=str(args.data_dir), out=str(args.out), **values)


def cmd_train(args) -> int:
    from ..train import train
    from ..train.distributed import world_from_env

    rank = world_from_env()[0]
    if rank != 0:  # torchrun: rank 0 reports; the others only say how they ended (exit code)
        args.quiet = True
        try:
            return _run(args, train, report=False)
        except GradCamError:
            return 2
    return _run(args, train, report=True)


def _run(args, train, report: bool) -> int:
    data_dir = args.data_dir
    if not Path(data_dir).exists():
        raise GradCamError(f"No data folder at {shown(data_dir)}.")
    check_outputs([(args.out, "model", "--out")], inputs=[data_dir, args.csv])
    cfg = config_from_args(args)
    result = drive(train(cfg), _train_events(report), quiet=args.quiet)
    if report and result is not None and (result.best_path or result.last_path):
        print(result.best_path or result.last_path)
        if result.skipped and not args.quiet:
            print(shown(f"{len(result.skipped)} file(s) were skipped, e.g. {result.skipped[0][0]} "
                        f"({result.skipped[0][1]})."), file=sys.stderr)
    return 0



def _train_events(report: bool):
    """``each`` for :func:`drive` over the trainer's events: the start line (unless quiet), a bar while images
    are read and one per epoch (unless quiet), and with ``report`` each epoch's line, the warnings and the end."""

    def each(ev, bar) -> None:
        if ev.kind == "start" and not bar.quiet:
            print(shown(ev.message), file=sys.stderr)
        elif ev.kind == "load":
            bar.step(ev.batch, ev.n_batches, "reading images", "img")
            if ev.batch >= ev.n_batches:
                bar.close()
        elif ev.kind == "batch":
            postfix = {} if ev.loss is None else {
                "loss": f"{ev.loss:.4f}", "img_s": f"{ev.images_per_s:.0f}" if ev.images_per_s else "?"}
            bar.step(ev.batch, ev.n_batches, f"epoch {ev.epoch}/{ev.n_epochs}", "batch", **postfix)
        elif ev.kind in ("epoch", "warning", "done", "stopped") and report:
            bar.close()
            print(("warning: " if ev.kind == "warning" else "") + shown(ev.message), file=sys.stderr)

    return each

def register(sub) -> None:
    """Add this module's command(s) to the subparsers ``sub``."""
    # train
    p = sub.add_parser(
        "train", help="train a classifier on a folder of class subfolders",
        description="Train a classifier on DATA_DIR (one subfolder of images per class, any format and size) and "
                    "write the best model (by validation metric) to --out, plus OUT.last.safetensors after every epoch. "
                    "Whole patients are held out for validation: the patient is read from file names with "
                    "--group-pattern (the Kermany chest X-ray names by default). Stop any time with Ctrl-C: the last "
                    "finished epoch's checkpoint stays; continue with --resume OUT.last.safetensors. "
                    "The defaults are a CPU recipe (simple_cnn at 128 px, a 15-minute budget on a CPU, the epoch "
                    "of lowest validation loss kept, a decision threshold chosen on the held-out patients). "
                    "Under torchrun every process trains on its share of the batches (DistributedDataParallel).",
        epilog=f"""examples:
  {PROG} train chest_xray/train --out pneumonia.safetensors
  torchrun --standalone --nproc_per_node 4 -m napari_gradcam train chest_xray/train --out pneumonia.safetensors
  {PROG} train chest_xray/train --out pneumonia.safetensors --arch resnet18 --image-size 224 --freeze-epochs 1
  {PROG} train chest_xray/train --out pneumonia.safetensors --resume pneumonia.last.safetensors --epochs 20
  {PROG} train photos/ --out m.safetensors --in-channels 3 --flips --group-pattern none
""", **_fmt_kw())
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder of images per class")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors", help="where to write the best model")
    groups = add_config_options(p)
    add_quiet(groups["run"])
    p.set_defaults(func=cmd_train)


#: Argument groups of the train command, in the order of --help.
GROUPS = ("data", "model", "optimisation", "augmentation", "control", "run")

#: The range of each number option of ``train`` (TrainConfig's own checks say what is valid; these also
#: say what is plausible, so ``--epochs 1000000000`` or ``--batch-size 10**9`` is a usage error up front).
#: Only the maximum is checked by the parser (TrainConfig.validate words the rest); a field not listed
#: here is bounded by its kind: whole numbers at most MAX_COUNT, numbers at most 1e12.
TRAIN_BOUNDS = {
    "epochs": (1, 100_000), "batch_size": (1, 4096), "image_size": (16, 4096), "freeze_epochs": (0, 100_000),
    "erase_grid": (1, 64), "bn_batches": (0, 100_000), "num_workers": (0, 256), "seed": (0, 2**32 - 1),
    "steps_per_epoch": (1, MAX_COUNT), "patience": (0, 100_000), "max_minutes": (0, 1e6),
    "lr": (1e-12, 10.0), "weight_decay": (0, 10.0), "momentum": (0, 0.999999), "warmup_epochs": (0, 100_000),
    "label_smoothing": (0, 0.999999), "val_fraction": (1e-6, 0.999999), "rotation": (0, 180.0),
    "translate": (0, 0.999999), "zoom": (0, 0.999999), "brightness": (0, 0.999999), "contrast": (0, 0.999999),
    "gamma": (0, 10.0), "blur": (0, 100.0), "erase": (0, 0.999999), "min_delta": (0, 1e6), "unlearn_p": (0, 1.0),
}


def _number_type(name: str, is_int: bool):
    """The argparse ``type=`` of the TrainConfig number field ``name``: a whole number or a number at most
    its :data:`TRAIN_BOUNDS` maximum (below the minimum, NaN and the rest are TrainConfig's own sentences)."""
    default = (0, MAX_COUNT) if is_int else (-1e12, 1e12)
    high = TRAIN_BOUNDS.get(name, default)[1]
    convert = int if is_int else float

    def parse(text: str):
        try:
            value = convert(str(text).strip())
        except ValueError:
            what = "a whole number" if is_int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, not {shown(repr(text))}") from None
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, not {value:,}")
        return value

    parse.__name__ = name
    return parse


def add_config_options(p) -> dict:
    """One option per TrainConfig field (help, choices, metavar from the field's metadata); returns the groups.

    Types follow the field's annotation: ``bool`` is a switch (``--flips``; a True default is switched off
    by the field's ``flag``, e.g. ``--no-augment``), ``list[str]`` takes several values, ``int``/``float``
    (or None) a number, anything else text.  Options left out keep TrainConfig's defaults.
    """
    import argparse
    from dataclasses import MISSING, fields

    from ..train import TrainConfig

    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kind = str(f.type).replace(" ", "")
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kw = {"dest": f.name, "help": meta.get("help", "")}
        default = f.default if f.default is not MISSING else f.default_factory()
        if kind == "bool":
            kw.update(action="store_false" if default else "store_true",
                      default=argparse.SUPPRESS if default else False)
        else:
            kw["default"] = default
            if kind.startswith("list["):
                kw["nargs"] = "+"
            elif kind.split("|")[0] in ("int", "float"):
                kw["type"] = _number_type(f.name, kind.startswith("int"))
            for key in ("choices", "metavar"):
                if key in meta:
                    kw[key] = meta[key]
        groups[meta.get("group", "run")].add_argument(flag, **kw)
    return groups
