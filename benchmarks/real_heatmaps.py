"""Where do a real-data model's heatmaps fall: inside the lungs, or on labels, borders and devices?

    python benchmarks/real_heatmaps.py [--data ../shared/data] [--epochs 3] [--max-minutes M]
                                       [--png docs/real_heatmaps.png]

Two small models, the same recipe (simple_cnn, 1 channel, 128 px, AdamW, cosine, augmentation,
seed 0), each held out by patient (20 %, stratified, grouped):

* **COVID vs normal (two sources).** All 243 adult COVID-19 radiographs of the Hannover set
  (patient from ``manifest.csv``) against 500 randomly chosen paediatric normals of the Kermany
  set (patient from the file name).  Adults vs children, two hospitals, two devices, burned-in
  markers of different styles, different aspect ratios (313 x 256 vs 224 x 224): a classifier can
  tell the *source* apart without looking at the lungs.
* **Pneumonia vs normal (one source, the contrast).** 600 paediatric pneumonia and 600 paediatric
  normal images of the Kermany set.

The reported accuracy/AUC and all heatmaps are of the *last* epoch's model (no checkpoint selection
on the held-out patients).  On every held-out image, Grad-CAM (at ``features``, 16 x 16 at 128 px)
and CAM for the predicted class are measured against crude geometric regions, in fractions of the
image's own height and width (the network sees the whole image resized to a square, so fractions
map one to one):

* ``border band``: pixels within 12 % of the height (top, bottom) or width (left, right) of an edge;
* ``corners``: the four 20 % x 20 % corner boxes (where burned-in side markers and text sit);
* ``top band``: the top 20 % of rows (neck, clavicles, and in the ICU images leads and tubes);
* ``lungs``: a crude lung mask, since no lung masks exist for these images: the image is
  percentile-normalised and smoothed (Gaussian, sigma 1.5 % of the short side); inside the
  border band's inner rectangle, pixels darker than Otsu's threshold (computed on that rectangle)
  are kept, opened, and the two largest connected components (hole-filled) are the lungs.  It is
  right on most images and wrong on some (air outside the body, white-out lungs); it never
  overlaps the border band;
* ``central box``: the central 60 % x 60 % (a cruder, mask-free lung field).

The regions overlap (corners and top band lie partly in the border band), so shares do not sum to 1.
For each region the *energy share* is the heatmap's mass inside it over its total mass; next to it
is the region's share of the image area, which is what a heatmap spread evenly would score.  The
*pointing game* location is where the heatmap's maximum lies (share of images whose maximum is in
the lungs, the central box, the border band, the corners).

The dark-lung mask misses consolidated (white) lung, so for pneumonia and COVID images a heatmap on
the opacity can fall outside it; the central box does not have that bias.  None of the regions
tells a lesion from the mediastinum or a lateral lung edge from the chest wall: they can show that
evidence sits at the image edges, not that it sits on the disease.

Prints a markdown table and writes a figure of held-out images with their Grad-CAM overlays
(inferno, alpha 0.5).  About 6 minutes on 2 busy CPU cores (4 CPU minutes).  Three epochs are
enough for the point made here (the two-source model is already near perfect); ``--max-minutes``
caps training time instead, but then the result depends on the machine's speed.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

RECIPE = dict(arch="simple_cnn", in_channels=1, image_size=128, epochs=3, batch_size=32, lr=2e-3,
              optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup_epochs=0.5, augment=True,
              class_weighting="balanced", monitor="balanced_accuracy", patience=None, seed=0,
              device="cpu", val_fraction=0.2)

BAND = 0.12      # border band: outer 12 % of each side
CORNER = 0.20    # corner boxes: 20 % x 20 %
TOP = 0.20       # top band: top 20 % of rows
CENTRAL = 0.60   # central box: 60 % x 60 %
REGIONS = ("lungs", "central box", "border band", "corners", "top band")
POINT_REGIONS = ("lungs", "central box", "border band", "corners")
METHODS = ("gradcam", "cam")


# ----------------------------------------------------------------------------- data sets
def covid_vs_normal(data: Path, n_normal: int, seed: int) -> list[tuple[str, str, str]]:
    """(path, label, patient) rows: all COVID images (patient from manifest.csv), n_normal random normals."""
    from napari_gradcam.data import PATIENT_PATTERN, group_of

    rows = []
    covid = data / "covid_hannover_256"
    with open(covid / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append((str(covid / r["file"]), "COVID", "covid-" + r["patient"]))
    normals = sorted((data / "chest_xray_pneumonia_224" / "train" / "NORMAL").glob("*.jpeg"))
    for p in random.Random(seed).sample(normals, min(n_normal, len(normals))):
        rows.append((str(p), "NORMAL", "kermany-" + group_of(p, PATIENT_PATTERN)))
    return rows


def pneumonia_vs_normal(data: Path, n_per_class: int, seed: int) -> list[tuple[str, str, str]]:
    """(path, label, patient) rows: n_per_class random images of each Kermany class."""
    from napari_gradcam.data import PATIENT_PATTERN, group_of

    rows = []
    rng = random.Random(seed)
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((data / "chest_xray_pneumonia_224" / "train" / label).glob("*.jpeg"))
        for p in rng.sample(files, min(n_per_class, len(files))):
            rows.append((str(p), label, "kermany-" + group_of(p, PATIENT_PATTERN)))
    return rows


def write_csv(rows, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- regions
def gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    return img


def lung_mask(img: np.ndarray) -> np.ndarray:
    """Crude lung mask: the two largest dark (below Otsu) smooth regions inside the border band."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    f = gray(img)
    h, w = f.shape
    lo, hi = np.percentile(f, [1, 99])
    f = ndi.gaussian_filter((f - lo) / max(hi - lo, 1e-6), 0.015 * min(h, w))
    inner = np.zeros((h, w), bool)
    bh, bw = int(round(BAND * h)), int(round(BAND * w))
    inner[bh:h - bh, bw:w - bw] = True
    m = (f < threshold_otsu(f[inner])) & inner
    m = ndi.binary_opening(m, iterations=max(1, int(0.02 * min(h, w))))
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = ndi.sum(m, lab, range(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    return ndi.binary_fill_holes(np.isin(lab, keep)) & inner


def regions(img: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks of the measured regions, in fractions of the image's own size."""
    f = gray(img)
    h, w = f.shape
    yy, xx = np.mgrid[0:h, 0:w]
    fy, fx = (yy + 0.5) / h, (xx + 0.5) / w
    border = (fy < BAND) | (fy > 1 - BAND) | (fx < BAND) | (fx > 1 - BAND)
    corners = ((fy < CORNER) | (fy > 1 - CORNER)) & ((fx < CORNER) | (fx > 1 - CORNER))
    c0 = (1 - CENTRAL) / 2
    central = (fy > c0) & (fy < 1 - c0) & (fx > c0) & (fx < 1 - c0)
    return {"lungs": lung_mask(f), "central box": central, "border band": border, "corners": corners,
            "top band": fy < TOP}


def measure(heat: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Energy share per region and, for the pointing game, whether the maximum lies in it."""
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0, None)
    total = heat.sum()
    out = {}
    iy, ix = np.unravel_index(int(np.argmax(heat)), heat.shape)
    for name, m in masks.items():
        out["E " + name] = float(heat[m].sum() / total) if total > 0 else float("nan")
        out["A " + name] = float(m.mean())
        out["P " + name] = float(m[iy, ix]) if total > 0 else 0.0
    return out


# ----------------------------------------------------------------------------- one experiment
def run_one(name: str, rows, workdir: Path, args, log) -> dict:
    import torch

    from napari_gradcam import load_model
    from napari_gradcam.data import read_image, scan_folder
    from napari_gradcam.engine import explain
    from napari_gradcam.metrics import classification_report
    from napari_gradcam.train import TrainConfig, evaluate_model, train

    csv_path = write_csv(rows, workdir / f"{name}.csv")
    data = scan_folder(None, csv=csv_path)
    tr, va = data.split(RECIPE["val_fraction"], seed=RECIPE["seed"])
    log(f"[{name}] train {tr.class_counts()} ({len(set(tr.groups))} patients), held out "
        f"{va.class_counts()} ({len(set(va.groups))} patients, {len(set(va.groups) & set(tr.groups))} on both sides)")
    torch.manual_seed(RECIPE["seed"])
    cfg = TrainConfig(csv=str(csv_path), out=str(workdir / f"{name}.safetensors"),
                      **{**RECIPE, "epochs": args.epochs, "image_size": args.image_size,
                         "max_minutes": args.max_minutes})
    gen = train(cfg, tr, va)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if ev.kind == "epoch":
            log(f"[{name}] [{ev.elapsed_s:5.0f} s] {ev.message}")
    # the last epoch's model: no checkpoint selection on the held-out patients
    bundle = load_model(result.last_path, device="cpu")
    probs, y, failed = evaluate_model(bundle, va)
    rep = classification_report(y, probs, bundle.classes)
    log(f"[{name}] held out: accuracy {rep['accuracy']:.3f}, AUC {rep['roc_auc']:.3f}, "
        f"{result.epochs_done} epochs ({result.reason})")

    per_image = []  # dicts: path, label, pred, prob, gradcam heat, measures per method
    for it in va.items:
        img = read_image(it.path)
        masks = regions(img)
        rec = {"path": it.path, "group": it.group, "label": bundle.classes[it.label], "masks_lungs": masks["lungs"]}
        heats = {}
        for method in METHODS:
            hm = explain(bundle, img, method=method)
            rec[method] = measure(hm.data, masks)
            heats[method] = hm.data
            if method == "gradcam":
                rec["pred"], rec["prob"], rec["heat"] = hm.target, hm.score, hm.data
        rec["cam_diff"] = float(np.abs(heats["gradcam"] - heats["cam"]).max())
        per_image.append(rec)
    return {"name": name, "classes": bundle.classes, "report": rep, "images": per_image,
            "n_patients": len(set(va.groups)), "epochs": result.epochs_done}


# ----------------------------------------------------------------------------- output
def pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.0f}%"


def tables(results, titles) -> str:
    lines = ["| model | held-out images (patients) | accuracy | ROC AUC |", "| --- | --- | --- | --- |"]
    for r in results:
        rep = r["report"]
        lines.append(f"| {titles[r['name']]} | {rep['n']} ({r['n_patients']}) | {rep['accuracy']:.3f} | "
                     f"{rep['roc_auc']:.3f} |")
    lines += ["", "Energy share of the heatmap (for the predicted class) in each region, mean over held-out "
              "images of the true class; `area` is the region's share of the image (what a uniform map, or a "
              "maximum at a random place, would score). "
              "Max in: share of images whose heatmap maximum lies in the region (pointing game).", ""]
    head = ["model", "method", "class (n)"] + list(REGIONS) + [f"max in {p}" for p in POINT_REGIONS]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        for cls in r["classes"]:
            imgs = [d for d in r["images"] if d["label"] == cls]
            if not imgs:
                continue
            same = max(d["cam_diff"] for d in r["images"]) < 1e-3  # CAM == Grad-CAM: print once
            for method in METHODS[:1] if same else METHODS:
                e = [np.nanmean([d[method]["E " + k] for d in imgs]) for k in REGIONS]
                p = [np.mean([d[method]["P " + k] for d in imgs]) for k in POINT_REGIONS]
                lines.append(f"| {titles[r['name']]} | {'Grad-CAM' if method == 'gradcam' else 'CAM'} | "
                             f"{cls} ({len(imgs)}) | " + " | ".join(pct(v) for v in e + p) + " |")
            a = [np.mean([d["gradcam"]["A " + k] for d in imgs]) for k in REGIONS + POINT_REGIONS]
            lines.append(f"| {titles[r['name']]} | area | {cls} ({len(imgs)}) | "
                         + " | ".join(pct(v) for v in a) + " |")
    lines.append("")
    for r in results:
        diff = max(d["cam_diff"] for d in r["images"])
        lines.append(f"CAM vs Grad-CAM ({titles[r['name']]}): largest difference of the normalised maps {diff:.1e}"
                     + (" (the same map: GAP + linear head, explained at the last conv block; CAM rows omitted)."
                        if diff < 1e-3 else "."))
    return "\n".join(lines)


def pick(images, cls: str, k: int, seed: int):
    """k held-out images of a class, from distinct patients where possible, deterministic."""
    pool = [d for d in images if d["label"] == cls]
    rng = random.Random(seed)
    rng.shuffle(pool)
    out, seen = [], set()
    for d in pool:  # one per patient first
        if d["group"] not in seen:
            out.append(d)
            seen.add(d["group"])
        if len(out) == k:
            return out
    return (out + [d for d in pool if d not in out])[:k]


def figure(results, titles, path: Path, k: int = 4, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from napari_gradcam.data import read_image

    n_cols = 2 * k
    fig, axes = plt.subplots(2 * len(results), n_cols, figsize=(1.75 * n_cols, 2.05 * 2 * len(results)),
                             gridspec_kw=dict(hspace=0.28, wspace=0.04))
    for row, r in enumerate(results):
        pos = [c for c in r["classes"] if c != "NORMAL"][0]
        chosen = pick(r["images"], pos, k, seed) + pick(r["images"], "NORMAL", k, seed)
        for col, d in enumerate(chosen):
            img = gray(read_image(d["path"]))
            h, w = img.shape
            a_img, a_ov = axes[2 * row, col], axes[2 * row + 1, col]
            for a in (a_img, a_ov):
                a.imshow(img, cmap="gray")
                a.set_xticks([])
                a.set_yticks([])
            a_ov.imshow(d["heat"], cmap="inferno", alpha=0.5, vmin=0, vmax=1)
            a_ov.add_patch(Rectangle((BAND * w, BAND * h), (1 - 2 * BAND) * w, (1 - 2 * BAND) * h,
                                     fill=False, ec="white", lw=0.8, ls=(0, (3, 3))))
            a_ov.contour(d["masks_lungs"], [0.5], colors="cyan", linewidths=0.6)
            ok = d["pred"] == d["label"]
            a_img.set_title(f"true {d['label']}", fontsize=8)
            a_ov.set_title(f"pred {d['pred']} {d['prob']:.2f}", fontsize=8, color="black" if ok else "red")
        axes[2 * row, 0].set_ylabel(titles[r["name"]].replace(" vs ", "\nvs "), fontsize=8)
        axes[2 * row + 1, 0].set_ylabel("Grad-CAM", fontsize=8)
    fig.suptitle("Held-out patients: Grad-CAM of the predicted class (inferno, alpha 0.5); dashed: 12 % border "
                 "band, cyan: crude lung mask", fontsize=9, y=0.995)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    try:  # shrink: a 256-colour palette is plenty for this figure
        from PIL import Image

        with Image.open(path) as im:
            im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    except Exception:  # noqa: BLE001 - the unquantised PNG is fine too
        pass
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--image-size", type=int, default=RECIPE["image_size"])
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="training time budget per model (makes the result depend on the machine's speed)")
    ap.add_argument("--n-normal", type=int, default=500, help="paediatric normals for the COVID model")
    ap.add_argument("--n-per-class", type=int, default=600, help="images per class for the pneumonia model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--png", default=str(ROOT / "docs" / "real_heatmaps.png"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "covid_hannover_256" / "manifest.csv").is_file() or not (data / "chest_xray_pneumonia_224").is_dir():
        print(f"no data at {data}; skipping")
        return 0
    t0, c0 = time.perf_counter(), time.process_time()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f} s] {msg}", flush=True)

    titles = {"covid": "COVID vs normal (2 sources)", "pneumonia": "pneumonia vs normal (1 source)"}
    with tempfile.TemporaryDirectory(prefix="real_heatmaps_") as tmp:
        work = Path(tmp)
        results = [run_one("covid", covid_vs_normal(data, args.n_normal, 0), work, args, log),
                   run_one("pneumonia", pneumonia_vs_normal(data, args.n_per_class, 0), work, args, log)]
    png = figure(results, titles, Path(args.png))
    log(f"figure: {png} ({png.stat().st_size / 1024:.0f} KB)")
    print()
    print(f"Recipe: {RECIPE['arch']}, {args.image_size} px, 1 channel, "
          + ", ".join(f"{r['epochs']} epochs ({r['name']})" for r in results)
          + ", AdamW 2e-3 cosine, augmentation, last-epoch model, held out by patient (20 %, seed 0).")
    print()
    print(tables(results, titles))
    print()
    print(f"wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
