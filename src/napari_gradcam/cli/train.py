"""``napari-gradcam train``: train a classifier from a folder of class subfolders."""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import PROG, GradCamError, _fmt_kw, _tqdm, add_device, add_quiet, check_outputs, shown


def cmd_train(args) -> int:
    from ..train import TrainConfig, train

    data_dir = args.data_dir
    check_outputs([(args.out, "model", "--out")], inputs=[data_dir, args.csv])
    if not Path(data_dir).exists():
        raise GradCamError(f"No data folder at {data_dir}.")
    cfg = TrainConfig(
        data_dir=str(data_dir), out=str(args.out), csv=args.csv, classes=args.classes,
        group_pattern=args.group_pattern, val_fraction=args.val_fraction, arch=args.arch,
        in_channels=args.in_channels, image_size=args.image_size, pretrained=args.pretrained,
        freeze_epochs=args.freeze_epochs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, class_weighting=args.class_weighting, augment=not args.no_augment,
        flips=args.flips, erase=args.erase, erase_grid=args.erase_grid, patience=(args.patience or None), monitor=args.monitor, amp=not args.no_amp,
        seed=args.seed, device=args.device, num_workers=args.workers, steps_per_epoch=args.steps_per_epoch,
        max_minutes=args.max_minutes, resume=args.resume,
    )
    gen = train(cfg)
    bar = None
    result = None
    quiet = args.quiet
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if ev.kind == "start":
                if not quiet:
                    print(shown(ev.message), file=sys.stderr)
            elif ev.kind == "load" and not quiet:
                if bar is None:
                    bar = _tqdm(total=ev.n_batches, desc="reading images", unit="img", leave=False)
                bar.n = ev.batch
                bar.refresh()
                if ev.batch >= ev.n_batches:
                    bar.close()
                    bar = None
            elif ev.kind == "batch" and not quiet:
                if bar is None:
                    bar = _tqdm(total=ev.n_batches, desc=f"epoch {ev.epoch}/{ev.n_epochs}", unit="batch", leave=False)
                bar.update(ev.batch - bar.n)
                if ev.loss is not None:
                    bar.set_postfix(loss=f"{ev.loss:.4f}",
                                    img_s=f"{ev.images_per_s:.0f}" if ev.images_per_s else "?", refresh=False)
            elif ev.kind == "epoch":
                if bar is not None:
                    bar.close()
                    bar = None
                print(shown(ev.message), file=sys.stderr)
            elif ev.kind in ("done", "stopped"):
                if bar is not None:
                    bar.close()
                    bar = None
                print(shown(ev.message), file=sys.stderr)
    except BaseException:  # Ctrl-C or an error: close the bar so the message gets a line of its own
        gen.close()
        if bar is not None:
            bar.close()
        raise
    if result is not None and (result.best_path or result.last_path):
        print(result.best_path or result.last_path)
        if result.skipped and not quiet:
            print(shown(f"{len(result.skipped)} file(s) were skipped, e.g. {result.skipped[0][0]} "
                        f"({result.skipped[0][1]})."), file=sys.stderr)
    return 0



def register(sub) -> None:
    """Add this module's command(s) to the subparsers ``sub``."""
    # train
    p = sub.add_parser(
        "train", help="train a classifier on a folder of class subfolders",
        description="Train a classifier on DATA_DIR (one subfolder of images per class, any format and size) and "
                    "write the best model (by validation metric) to --out, plus OUT.last.safetensors after every epoch. "
                    "Whole patients are held out for validation: the patient is read from file names with "
                    "--group-pattern (the Kermany chest X-ray names by default). Stop any time with Ctrl-C: the last "
                    "finished epoch's checkpoint stays; continue with --resume OUT.last.safetensors.",
        epilog=f"""examples:
  {PROG} train chest_xray/train --out pneumonia.safetensors
  {PROG} train chest_xray/train --out pneumonia.safetensors --arch resnet18 --image-size 224 --freeze-epochs 1
  {PROG} train chest_xray/train --out pneumonia.safetensors --resume pneumonia.last.safetensors --epochs 20
  {PROG} train photos/ --out m.safetensors --in-channels 3 --flips --group-pattern none
""", **_fmt_kw())
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder with one subfolder of images per class")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors", help="where to write the best model")
    g = p.add_argument_group("data")
    g.add_argument("--csv", help="CSV of path,label[,group] rows instead of class subfolders (paths relative to DATA_DIR)")
    g.add_argument("--classes", nargs="+", metavar="CLASS", help="use only these classes, in this order")
    g.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="share of images held out for validation")
    g.add_argument("--group-pattern", default="auto", metavar="REGEX",
                   help="regex whose first group in the file name is the patient; 'auto': Kermany names "
                        "(person123_..., IM-0115-...); 'none': every file on its own")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="simple_cnn",
                   help="simple_cnn, alexnet, vgg16, vgg19, resnet18, resnet50, mobilenet_v2, densenet121, efficientnet_b0, "
                        "any other torchvision classifier (convnext_tiny, efficientnet_v2_s, swin_t, ...) or timm:NAME")
    g.add_argument("--image-size", type=int, default=224, metavar="N", help="network input size: images are resized to N x N (on a CPU, 64-128 trains in minutes)")
    g.add_argument("--in-channels", type=int, default=1, choices=(1, 3), help="1: grayscale, 3: RGB")
    g.add_argument("--pretrained", default="auto", metavar="auto|true|false|PATH",
                   help="ImageNet initialisation: 'auto' (when torchvision's weights file is in the cache), "
                        "'true', 'false' or a path to a weights file; never downloads")
    g.add_argument("--freeze-epochs", type=int, default=0, metavar="N", help="train only the head for the first N epochs")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, metavar="N", help="passes over the training images")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per optimisation step")
    g.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="peak learning rate")
    g.add_argument("--optimizer", default="adamw", choices=("adamw", "adam", "sgd"))
    g.add_argument("--weight-decay", type=float, default=1e-4, metavar="W", help="L2 penalty (decoupled for AdamW)")
    g.add_argument("--schedule", default="cosine", choices=("cosine", "step", "constant"), help="learning-rate schedule")
    g.add_argument("--warmup-epochs", type=float, default=0.0, metavar="E", help="linear learning-rate warm-up, in epochs")
    g.add_argument("--class-weighting", default="balanced", choices=("balanced", "sampler", "none"),
                   help="'balanced': loss weights inverse to class size; 'sampler': balanced sampling")
    g.add_argument("--no-augment", action="store_true",
                   help="switch off augmentation (small rotations, shifts, zoom, brightness/contrast)")
    g.add_argument("--flips", action="store_true", help="add random horizontal flips (off for chest X-rays)")
    g.add_argument("--erase", type=float, default=0.0, metavar="P",
                   help="hide-and-seek: hide each cell of a grid with probability P while training, so that "
                        "heatmaps cover all of the evidence (try 0.2-0.3)")
    g.add_argument("--erase-grid", type=int, default=4, metavar="N", help="hide-and-seek grid, N x N cells")
    g.add_argument("--patience", type=int, default=5, metavar="N",
                   help="early stopping after N epochs without improvement; 0: never")
    g.add_argument("--monitor", default="balanced_accuracy",
                   choices=("balanced_accuracy", "accuracy", "roc_auc", "val_loss"), help="validation metric for the best model")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--steps-per-epoch", type=int, default=None, metavar="N", help="cap batches per epoch (quick trials)")
    g.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="time budget: the learning-rate schedule follows the clock, and no epoch starts "
                        "that would end after M minutes")
    g = p.add_argument_group("run")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (weights, epoch count, optimizer)")
    g.add_argument("--seed", type=int, default=0, help="fixes the split, initialisation, batch order and augmentation")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading processes when images do not fit in memory")
    add_device(g)
    add_quiet(g)
    p.set_defaults(func=cmd_train)

