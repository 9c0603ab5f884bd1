"""``report.html``: one self-contained page (PNG images embedded as data URIs): the verdicts first, the
per-class mean maps on one colour scale, each cluster's gallery of member thumbnails with their maps and
box and its counterfactual results, the embedding scatter, and what was skipped."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd



class AuditView(Protocol):
    """What the report reads of an audit (an :class:`~napari_gradcam.audit.result.Audit`): the table,
    the findings, the class names, the maps' store and the images.  Named here rather than imported
    from :mod:`.result`, whose ``Audit.save`` writes this report."""

    table: "pd.DataFrame"
    findings: dict

    @property
    def classes(self) -> list[str]: ...

    def maps(self, name: str = "grid") -> np.ndarray: ...

    def read_image(self, i: int) -> np.ndarray: ...


THUMBS = 12
_CSS = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
.shortcut{background:#fde0dc}.none{background:#e8f5e9}.untested{background:#f3f3f3}
.gallery img{margin:2px;border:1px solid #999}h2{border-bottom:2px solid #444}.reason{font-size:13px}"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _png_array(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(n: int, size: float = 2.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(n, 1), figsize=(size * max(n, 1) + 1, size), squeeze=False)
    return fig, axes[0]


def class_means_png(a: AuditView) -> str:
    """The classes' mean maps side by side on one colour scale (share of the evidence per grid cell)."""
    means = a.maps("class_means")
    fig, axes = _figure(len(means))
    top = float(means.max()) or 1.0
    for ax, m, c in zip(axes, means, a.classes):
        im = ax.imshow(m, cmap="inferno", vmin=0, vmax=top, extent=(0, 1, 1, 0))
        n = a.findings["class_stats"][c]["n"]
        ax.set_title(f"{c} (n = {n})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of evidence per cell")
    return _png(fig)


def embedding_png(a: AuditView) -> str:
    """Per class, the 2-D spectral embedding coloured by cluster."""
    emb = a.maps("embedding")
    fig, axes = _figure(len(a.classes), 3.2)
    for ax, c in zip(axes, a.classes):
        rows = np.nonzero((a.table["predicted"] == c).to_numpy() & np.isfinite(emb[:, 0]))[0]
        for cid in sorted(set(a.table["cluster"].iloc[rows])):
            sel = rows[a.table["cluster"].iloc[rows].to_numpy() == cid]
            ax.scatter(emb[sel, 0], emb[sel, 1], s=8, label=f"cluster {cid} ({len(sel)})")
        ax.set_title(f"predicted {c}")
        ax.set_xticks([])
        ax.set_yticks([])
        if len(rows):
            ax.legend(fontsize=7, loc="best")
    return _png(fig)


def thumbnail(a: AuditView, row: int, box, size: int = 96) -> str:
    """One member: the image in gray, its map (the common grid, scaled to its peak) on top, the box in cyan."""
    from skimage.transform import resize

    from ..overlays import overlay_rgb
    from ..preprocess import check_image

    img = check_image(a.read_image(row))
    h, w = img.shape[:2]
    scale = size / max(h, w)
    small = resize(img, (max(1, round(h * scale)), max(1, round(w * scale))) + img.shape[2:], preserve_range=True,
                   anti_aliasing=True).astype(np.float32)
    grid = a.maps("grid")[row] if not hasattr(a, "_grid") else a._grid[row]
    heat = resize(grid / (grid.max() or 1.0), small.shape[:2], order=1)
    rgb = overlay_rgb(small, heat, alpha=0.45)
    r0, c0 = int(box[0] * rgb.shape[0]), int(box[1] * rgb.shape[1])
    r1, c1 = max(r0 + 1, int(box[2] * rgb.shape[0]) - 1), max(c0 + 1, int(box[3] * rgb.shape[1]) - 1)
    for r in (r0, r1):
        rgb[r, c0:c1 + 1] = (0, 255, 255)
    for c in (c0, c1):
        rgb[r0:r1 + 1, c] = (0, 255, 255)
    return _png_array(rgb)


def mean_map_thumbnail(mean: np.ndarray, box, size: int = 96) -> str:
    """A cluster's mean map (inferno, scaled to its peak) with its box in cyan."""
    from matplotlib import colormaps
    from skimage.transform import resize

    m = resize(mean / (mean.max() or 1.0), (size, size), order=1)
    rgb = (colormaps["inferno"](np.clip(m, 0, 1))[..., :3] * 255).astype(np.uint8)
    r0, c0 = int(box[0] * size), int(box[1] * size)
    r1, c1 = max(r0 + 1, int(box[2] * size) - 1), max(c0 + 1, int(box[3] * size) - 1)
    rgb[[r0, r1], c0:c1 + 1] = (0, 255, 255)
    rgb[r0:r1 + 1, [c0, c1]] = (0, 255, 255)
    return _png_array(rgb)


def _test_text(name: str, result: dict | None, key: str) -> str:
    if not result:
        return f"<li>{name}: not run</li>"
    c = result.get("control") or {}
    extra = f", mean probability drop {result['drop']:.3f} (control {c.get('drop', float('nan')):.3f})" \
        if "drop" in result else ""
    return (f"<li>{name}: {result[key]}/{result['n']} ({100 * result['rate']:.0f} %) vs control "
            f"{c.get(key, '-')}/{c.get('n', '-')} ({100 * c.get('rate', 0):.0f} %){extra}</li>")


def _verdict_class(v: str) -> str:
    return {"likely shortcut": "shortcut", "no evidence": "none"}.get(v, "untested")


def _cluster_section(a: AuditView, c: dict, index: dict[str, int], mean: np.ndarray | None) -> str:
    rows = [index[p] for p in c["members"] if p in index]
    pick = rows if len(rows) <= THUMBS else [rows[i] for i in np.linspace(0, len(rows) - 1, THUMBS).astype(int)]
    thumbs = [] if mean is None else [f'<img src="{mean_map_thumbnail(mean, c["box"])}" title="the cluster\'s '
                                      f'mean map" style="border:2px solid #0aa">']
    for r in pick:
        try:
            thumbs.append(f'<img src="{thumbnail(a, r, c["box"])}" title="{html.escape(str(a.table["path"].iloc[r]))}">')
        except Exception:  # noqa: BLE001 - a file that vanished since the pass: no thumbnail
            continue
    box = ", ".join(f"{v:.2f}" for v in c["box"])
    return (f'<h3 id="c{c["id"]}">Cluster {c["id"]} - {html.escape(c["class"])}, {c["size"]} image(s): '
            f'<span class="{_verdict_class(c["verdict"])}">{c["verdict"]}</span></h3>'
            f'<p>box [y0, x0, y1, x1] = [{box}]; distance from the class\'s main strategy '
            f'{c["distance_from_main"]:.2f}</p><ul>'
            + _test_text("removal: predictions changed", c.get("removal"), "changed")
            + _test_text("insertion: predictions moved to the class", c.get("insertion"), "moved")
            + f'</ul><p class="reason">{html.escape(c["reason"])}</p><div class="gallery">{"".join(thumbs)}</div>')


def comparison_section(comparison: dict | None) -> str:
    """An earlier audit's findings re-checked on this model (``audit --compare``): gone or still used."""
    if not comparison:
        return ""
    rows = "".join(
        f'<tr class="{"none" if r["gone"] else "shortcut"}"><td>{r["id"]}</td><td>{html.escape(r["class"])}</td>'
        f'<td>{"gone" if r["gone"] else "still used"}</td><td class="reason">{html.escape(r["reason"])}</td></tr>'
        for r in comparison["findings"])
    return (f"<h2>Findings of {html.escape(str(comparison['audit']))}, re-checked on this model</h2>"
            f"<table><tr><th>finding</th><th>class</th><th>now</th><th>why</th></tr>{rows}</table>")


def render_report(a: AuditView) -> str:
    """The page's HTML."""
    f = a.findings
    index = {p: i for i, p in enumerate(a.table["path"])}
    stored = a.maps("cluster_means")
    ids = sorted(c["id"] for c in f["clusters"])  # cluster_means is in id order
    means = {cid: stored[k] for k, cid in enumerate(ids) if k < len(stored)}
    n_ok = int((a.table["status"] == "ok").sum())
    rows = "".join(
        f'<tr class="{_verdict_class(c["verdict"])}"><td><a href="#c{c["id"]}">{c["id"]}</a></td>'
        f'<td>{html.escape(c["class"])}</td><td>{c["size"]}</td><td>{c["verdict"]}</td>'
        f'<td class="reason">{html.escape(c["reason"])}</td></tr>' for c in f["clusters"])
    skipped = "".join(f"<tr><td>{html.escape(str(s['path']))}</td><td>{html.escape(str(s['reason']))}</td></tr>"
                      for s in f["skipped"])
    stats = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{s['n']}</td><td>{_share(s['frame_share'])}</td>"
        f"<td>{_share(s['outside_mask_share'])}</td></tr>" for c, s in f["class_stats"].items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Audit</title><style>{_CSS}</style></head><body>"
            f"<h1>Data set audit</h1><p>model {html.escape(str(f['model']))}, {html.escape(f['method'])} at "
            f"{html.escape(f['layer'])}; {html.escape(str(f['source']))}: {n_ok} image(s) explained, "
            f"{len(f['skipped'])} skipped.</p>{comparison_section(f.get('comparison'))}"
            f"<h2>Verdicts</h2><table><tr><th>cluster</th><th>class</th><th>size</th><th>verdict</th><th>why</th></tr>"
            f"{rows}</table><h2>Where the evidence lies, per predicted class</h2>"
            f"<img src='{class_means_png(a)}'><table><tr><th>class</th><th>images</th><th>frame share (median, 10-90 %)"
            f"</th><th>outside the mask</th></tr>{stats}</table>"
            f"<h2>Strategies (spectral embedding of the maps)</h2><img src='{embedding_png(a)}'>"
            f"<h2>Clusters</h2><p>Each gallery starts with the cluster's mean map (framed), then members with "
            f"their maps; the box in cyan.</p>{''.join(_cluster_section(a, c, index, means.get(c['id'])) for c in f['clusters'])}"
            f"<h2>Skipped</h2><table><tr><th>path</th><th>reason</th></tr>{skipped}</table></body></html>")


def _share(s: dict | None) -> str:
    return "-" if not s else f"{100 * s['median']:.0f} % ({100 * s['q10']:.0f}-{100 * s['q90']:.0f} %)"


def write_report(a: AuditView, path: Path) -> None:
    """Write ``report.html`` (the maps read once)."""
    a._grid = a.maps("grid")
    try:
        Path(path).write_text(render_report(a), encoding="utf-8")
    finally:
        del a._grid
