"""Drawing the synthetic chest radiographs of :mod:`napari_gradcam.phantoms`: smooth random fields, the
patient's anatomy (body, lungs, mediastinum, bones), the lesion of each class, and the exposure.

:func:`_render` ``(label, size, seed) -> (image, mask)`` is the one entry point; the anatomy depends only on
``seed``, the lesion on ``seed`` and ``label``.  Only numpy and scipy are used.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from scipy import ndimage

#: Class names, in label-index order.
CLASSES: tuple[str, ...] = ("normal", "pneumonia", "covid")

_SALT = 0x6C7A  # decorrelates our streams from other users of small seeds


# --------------------------------------------------------------------------
# small vectorised helpers (all float32)
# --------------------------------------------------------------------------
def _sig(z):
    """Logistic function, computed via tanh (no overflow warnings)."""
    return np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.5) * z)


@functools.lru_cache(maxsize=64)
def _bspline_matrix(n: int, size: int) -> np.ndarray:
    """``(size, n)`` periodic cubic B-spline upsampling weights, rows scaled
    so that i.i.d. unit-variance knots give unit-variance samples."""
    t = (np.arange(size) + 0.5) * (n / size) - 0.5
    j = np.arange(n)
    u = np.abs(((t[:, None] - j[None, :]) + n / 2) % n - n / 2)   # wrapped distance
    w = np.where(u < 1, 2 / 3 - u ** 2 + u ** 3 / 2,
                 np.where(u < 2, (2 - u) ** 3 / 6, 0.0))
    w /= np.sqrt((w ** 2).sum(1, keepdims=True))
    return w.astype(np.float32)


def _field(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth random field of unit variance, ``(size, size)`` float32.

    ``n x n`` random knots are upsampled with a cubic B-spline.  The random
    draws depend only on ``n`` (not on ``size``), so the same generator state
    gives the same pattern at every resolution.
    """
    g = rng.standard_normal((n, n)).astype(np.float32)
    a = _bspline_matrix(n, size)
    # einsum (not matmul): tiny products, and BLAS threads only cost here
    t = np.einsum("ij,jk->ik", a, g)
    return np.einsum("ik,lk->il", t, a)


def _sample(grid: np.ndarray, rows, cols) -> np.ndarray:
    """Bilinear lookup of ``grid`` at fractional (rows, cols).

    Rows wrap around (an angle), columns are clamped.
    """
    nr, nc = grid.shape
    flat = grid.ravel()
    cols = np.clip(cols, 0, nc - 1.001)
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = rows - r0
    fc = cols - c0
    i00 = (r0.astype(np.intp) % nr) * nc + c0.astype(np.intp)
    i10 = (i00 + nc) % (nr * nc)
    top = flat.take(i00) * (1 - fc) + flat.take(i00 + 1) * fc
    bot = flat.take(i10) * (1 - fc) + flat.take(i10 + 1) * fc
    return top * (1 - fr) + bot * fr


# --------------------------------------------------------------------------
# the phantom
# --------------------------------------------------------------------------
def _anatomy_params(rng: np.random.Generator) -> dict:
    u = rng.uniform
    p = {
        # patient pose / size, in normalised image units ([-1, 1] across)
        "scale": u(0.90, 1.03),
        "tx": u(-0.03, 0.03),
        "ty": u(-0.04, 0.05),
        "rot": np.deg2rad(u(-4.0, 4.0)),
        # body outline
        "w_body": u(0.80, 0.90),
        "shoulder_y": u(-1.08, -0.98),
        "arms": rng.random() < 0.5,
        "shoulder_w": u(0.08, 0.16),
        # lungs
        "lung_dc": u(0.38, 0.43),
        "lung_al": u(0.36, 0.42),
        "lung_am": u(0.24, 0.29),
        "lung_ap": u(-0.84, -0.74),
        "lung_cp": u(0.44, 0.58),
        "dome_h": u(0.12, 0.19),
        "dome_r_extra": u(0.02, 0.07),  # right hemidiaphragm sits higher
        "air": u(0.50, 0.58),
        # mediastinum / heart
        "medi_w": u(0.10, 0.13),
        "heart_x": u(0.06, 0.12),
        "heart_a": u(0.33, 0.40),
        "heart_b": u(0.24, 0.29),
        "heart_tilt": np.deg2rad(u(15.0, 32.0)),
        "knob": u(0.07, 0.09),
        "gastric": rng.random() < 0.6,
        # bones
        "rib_sp": u(0.105, 0.125),
        "rib_v0": u(-0.86, -0.80),
        "rib_a": u(0.40, 0.60),
        "rib_w": u(0.034, 0.044),
        "rib_amp": u(0.06, 0.09),
        "clav_y": u(-0.66, -0.58),
        "clav_slope": u(0.15, 0.30),
        "vert_p": u(0.095, 0.115),
        # exposure / rendering
        "k": u(1.5, 2.6),
        "gamma": u(0.85, 1.2),
        "lo": u(-0.04, 0.06),
        "hi": u(0.95, 1.10),
        "heel": u(-0.10, 0.10),
        "heel_y": u(-0.06, 0.06),
        "noise": u(0.008, 0.025),
    }
    return p


class _Frame(NamedTuple):
    """One radiograph's patient frame: float32 (size, size) coordinates and the shared outlines."""

    size: int
    p: dict  # the anatomy parameters (:func:`_anatomy_params`)
    X: np.ndarray  # (1, size) image coordinates in [-1, 1]
    Y: np.ndarray  # (size, 1)
    x: np.ndarray  # (size, size) patient coordinates (rotated, shifted, scaled)
    y: np.ndarray
    d: np.ndarray  # distance from the midline
    e: np.float32  # edge softness: ~1 px, never sharper than anatomy allows


def _render(label: str, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One phantom radiograph: (size, size) uint8 image and bool lesion mask, the same patient at any size.

    Attenuation ``D`` is built up in a fixed order (body, lungs, organs, lung markings, bones, air,
    lesion), then exposed (:func:`_expose`)."""
    rng = np.random.default_rng([_SALT, seed, 0])      # anatomy
    p = _anatomy_params(rng)
    # smooth texture fields (fixed draw order => same patient at any size)
    tex_lung = _field(rng, 12, size)
    tex_body = _field(rng, 6, size)
    vessel_grids = [rng.standard_normal((56, 7)).astype(np.float32) for _ in range(2)]
    f = _patient_frame(p, size)
    D, body, w, thick = _body(f, tex_body)
    lungs = _lungs(f, D, body)
    not_medi, heart, medi, lung_any = _mediastinum(f, D, body, lungs)
    bone_vis = np.float32(0.35) + np.float32(0.65) * lung_any   # bone contrast is low over solid tissue
    air_total, lung_vis, marks = _lung_fields(f, D, lungs, vessel_grids, medi, heart, not_medi, thick, tex_lung)
    _bones(f, D, w, bone_vis)
    # lung air lowers the attenuation (the X-ray is darker there)
    D -= np.float32(p["air"]) * air_total  # (lesions are handled below)
    mask = np.zeros((size, size), bool)
    if label != "normal":
        mask = _lesion(label, seed, f, D, lungs, not_medi, lung_vis, marks, air_total)
    return _expose(f, D, seed), mask


def _patient_frame(p: dict, size: int) -> _Frame:
    """Image grid -> patient frame (rotation, shift and scale of the anatomy parameters)."""
    f32 = np.float32
    c = ((np.arange(size, dtype=f32) + f32(0.5)) * f32(2.0 / size) - f32(1.0))
    X = c[None, :]
    Y = c[:, None]
    cr, sr = f32(np.cos(p["rot"])), f32(np.sin(p["rot"]))
    s = f32(p["scale"])
    x = (cr * (X - f32(p["tx"])) + sr * (Y - f32(p["ty"]))) / s
    y = (-sr * (X - f32(p["tx"])) + cr * (Y - f32(p["ty"]))) / s
    e = f32(max(0.012, 1.6 / size) / p["scale"])
    return _Frame(size, p, X, Y, x, y, np.abs(x), e)


def _body(f: _Frame, tex_body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The body's attenuation D (shoulders, arms, trachea), its mask, half-width w and thickness."""
    f32, p, y, d, e = np.float32, f.p, f.y, f.d, f.e
    # chest wall: convex, widest near the diaphragm; shoulders above
    w = f32(p["w_body"]) * (1 - f32(0.10) * (y - f32(0.3)) ** 2) \
        + f32(p["shoulder_w"]) * _sig((f32(-0.50) - y) / f32(0.07))
    # top edge: neck in the middle, trapezius sloping down to the shoulders
    top = f32(p["shoulder_y"]) + f32(0.55) * np.logaddexp(f32(0), (d - f32(0.30)) / f32(0.06)) * f32(0.06)
    body = _sig((w - d) / e) * _sig((y - top) / (2 * e))
    thick = np.sqrt(np.clip(1 - (d / w) ** 2, 0, 1))
    D = body * (f32(0.22) + f32(0.40) * thick + f32(0.03) * tex_body)
    D += f32(0.08) * body * _sig((f32(-0.45) - y) / f32(0.10))   # shoulder girdle
    if p["arms"]:
        arm_in = f32(p["w_body"]) + f32(0.08)
        arm = _sig((d - arm_in) / e) * _sig((y - top) / (2 * e)) * _sig((f32(0.1) - y) / f32(0.15))
        D += arm * f32(0.6)
        hum = np.hypot(d - (arm_in + 0.13), y - (p["shoulder_y"] + 0.42))
        D += f32(0.18) * _sig((f32(0.14) - hum) / e) * body
    # trachea: dark air column down to the carina
    trach = _sig((f32(0.035) - d) / e) * _sig((f32(-0.30) - y) / f32(0.03)) * body
    D -= f32(0.12) * trach
    return D, body, w, thick


def _lungs(f: _Frame, D: np.ndarray, body: np.ndarray) -> list:
    """Both lungs, per side (sign, lung mask, inner distance, geometry dict); the stomach bubble under
    the left hemidiaphragm (image right) is taken from D."""
    f32, p, x, y, e = np.float32, f.p, f.x, f.y, f.e
    lungs = []
    for sgn in (-1.0, 1.0):
        dc, al, am = p["lung_dc"], p["lung_al"], p["lung_am"]
        yap, ycp = p["lung_ap"], p["lung_cp"]
        dh = p["dome_h"] + (p["dome_r_extra"] if sgn < 0 else 0.0)
        xs = f32(sgn) * x
        dd = xs - f32(dc)
        a = np.where(dd > 0, f32(al), f32(am))
        yc = ycp + 0.02
        H = yc - yap
        r = np.sqrt((dd / a) ** 2 + (np.minimum(y - f32(yc), 0) / f32(H)) ** 2)
        dist_e = (1 - r) * a
        y_dome = f32(ycp) - f32(dh) * np.clip(1 - ((xs - f32(0.42)) / f32(0.46)) ** 2, 0, 1)
        dist_d = y_dome - y
        dist = np.minimum(dist_e, dist_d)
        lung = _sig(dist / e)
        lungs.append((sgn, lung, dist, dict(dc=dc, al=al, yap=yap, yc=yc, H=H, ycp=ycp, dh=dh)))
        if sgn > 0 and p["gastric"]:
            gb = np.hypot((xs - 0.45) / 0.12, (y - (y_dome + 0.11)) / 0.06)
            D -= f32(0.18) * _sig((1 - gb) * 0.06 / e) * body
    return lungs


def _mediastinum(f: _Frame, D: np.ndarray, body: np.ndarray, lungs: list):
    """Mediastinum, aortic knob, heart and the abdomen below the domes, added to D.  Returns
    (not_medi, heart, medi, lung_any): where neither mediastinum nor heart is, the heart, the
    mediastinum, both lungs."""
    f32, p, x, y, d, e = np.float32, f.p, f.x, f.y, f.d, f.e
    mw = f32(p["medi_w"]) + f32(0.025) * _sig((y + f32(0.25)) / f32(0.08))
    medi = _sig((mw - d) / e) * _sig((f32(p["lung_cp"]) - y) / f32(0.05))
    knob = np.hypot(x - 0.11, y + 0.40)
    medi = np.maximum(medi, _sig((f32(p["knob"]) - knob) / e))
    ct, st = f32(np.cos(p["heart_tilt"])), f32(np.sin(p["heart_tilt"]))
    hx0, hy0 = f32(p["heart_x"]), f32(p["lung_cp"] - 0.27)
    hu = ct * (x - hx0) + st * (y - hy0)
    hv = -st * (x - hx0) + ct * (y - hy0)
    rh = np.sqrt((hu / f32(p["heart_a"])) ** 2 + (hv / f32(p["heart_b"])) ** 2)
    heart = _sig((1 - rh) * f32(p["heart_b"]) / e)
    not_medi = (1 - medi) * (1 - heart)
    lung_any = lungs[0][1] + lungs[1][1]
    # solid organs: mediastinum/heart and the abdomen below the domes
    abdomen = (1 - lung_any) * _sig((y - f32(p["lung_cp"] - 0.22)) / f32(0.05)) \
        * _sig((f32(0.78) - d) / f32(0.06))
    D += f32(0.14) * np.maximum(np.maximum(medi, heart), abdomen) * body
    return not_medi, heart, medi, lung_any


def _lung_fields(f: _Frame, D: np.ndarray, lungs: list, vessel_grids: list, medi, heart, not_medi, thick,
                 tex_lung) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lung air, the visible lung fields and the bronchovascular markings radiating from the hila (the
    markings and hila added to D): (air_total, lung_vis, marks)."""
    f32, size, x, y = np.float32, f.size, f.x, f.y
    air_total = np.zeros((size, size), f32)
    lung_vis = np.zeros((size, size), f32)
    marks = np.zeros((size, size), f32)
    for (sgn, lung, dist, g), vg in zip(lungs, vessel_grids):
        vis = lung * not_medi
        lung_vis += vis
        thick_l = 1 - f32(0.25) * np.exp(-np.maximum(dist, 0) / f32(0.07))
        air_total += lung * (1 - medi) * (1 - f32(0.75) * heart) * thick_l * (f32(0.45) + f32(0.55) * thick)
        hxp, hyp = 0.16, -0.10
        xs = f32(sgn) * x
        rr = np.hypot(xs - f32(hxp), y - f32(hyp)) + f32(1e-3)
        th = np.arctan2(y - f32(hyp), xs - f32(hxp))
        rows = (th + f32(np.pi)) * f32(56 / (2 * np.pi))
        cols = np.sqrt(rr) * f32(7.0)
        gval = _sample(vg, rows, cols)
        width = f32(0.45) * np.sqrt(f32(0.25) / np.maximum(rr, f32(0.1)))
        ves = np.exp(-(gval / width) ** 2) * np.exp(-rr / f32(0.40))
        marks += lung * ves
        D += f32(0.10) * np.exp(-(((xs - 0.17) / 0.07) ** 2 + ((y + 0.08) / 0.10) ** 2))  # hilum
    D += f32(0.08) * marks
    air_total *= 1 + f32(0.05) * tex_lung
    return air_total, lung_vis, marks


def _bones(f: _Frame, D: np.ndarray, w: np.ndarray, bone_vis: np.ndarray) -> None:
    """Spine, posterior and anterior ribs and clavicles, added to D."""
    f32, p, y, d, e = np.float32, f.p, f.y, f.d, f.e
    # spine: vertebral bodies with darker disc spaces
    ph = (y + f32(0.9)) / f32(p["vert_p"])
    fr = ph - np.floor(ph) - f32(0.5)
    vert = 1 - f32(0.3) * np.exp(-(fr / f32(0.12)) ** 2)
    ped = np.exp(-(((d - 0.055) / 0.018) ** 2 + (fr / 0.22) ** 2))
    spine = _sig((f32(0.075) - d) / e) * vert + f32(0.4) * ped
    D += f32(0.07) * spine * _sig((y + 1.0) / 0.05) * (f32(0.5) + f32(0.5) * bone_vis)
    # posterior ribs: arches, highest at mid-lung, spacing widens downward
    dp = f32(0.45)
    S = f32(p["rib_a"]) * ((d - dp) ** 2 - dp ** 2)
    v = y - S - f32(p["rib_v0"])
    phr = v / f32(p["rib_sp"])
    phr = phr / (1 + f32(0.035) * np.clip(phr, 0, None))
    k = np.round(phr)
    fr = (phr - k) * f32(p["rib_sp"])
    hw = f32(p["rib_w"]) * (1 + f32(0.04) * k) / 2
    rib = _sig((hw - np.abs(fr)) / e) + f32(0.3) * np.exp(-((np.abs(fr) - hw) / e) ** 2)
    rib *= (k >= 0) & (k <= 9)
    rib_lat = _sig((w - f32(0.03) - d) / e) * _sig((d - f32(0.06)) / f32(0.02)) * bone_vis
    D += f32(p["rib_amp"]) * rib * rib_lat
    # anterior ribs: fainter, sloping down towards the midline
    va = y - f32(0.42) * (f32(0.82) - d) - f32(p["rib_v0"] - 0.02)
    pha = va / f32(p["rib_sp"] * 1.05)
    ka = np.round(pha)
    fra = (pha - ka) * f32(p["rib_sp"] * 1.05)
    riba = _sig((f32(0.03) - np.abs(fra)) / (2 * e)) * (ka >= 1) * (ka <= 6)
    riba *= _sig((d - f32(0.30)) / f32(0.05)) * _sig((w - f32(0.05) - d) / e)
    D += f32(0.05) * riba * bone_vis
    # clavicles: from the manubrium outwards and slightly upwards
    cy = f32(p["clav_y"]) - f32(p["clav_slope"]) * (d - f32(0.1)) \
        + f32(0.03) * np.sin(f32(np.pi / 0.35) * (d - f32(0.1)))
    clav = _sig((f32(0.026) - np.abs(y - cy)) / e) * _sig((d - f32(0.08)) / e) \
        * _sig((f32(0.76) - d) / f32(0.03))
    D += f32(0.20) * clav


def _lesion(label: str, seed: int, f: _Frame, D: np.ndarray, lungs: list, not_medi, lung_vis, marks,
            air_total) -> np.ndarray:
    """The lesion of an abnormal class: its opacity replaces air in D (brighter by air * opacity, kept to
    the visible lung fields); returns its (size, size) bool mask."""
    x, y, e = f.x, f.y, f.e
    lrng = np.random.default_rng([_SALT, seed, 1, CLASSES.index(label)])
    sides = [lung * not_medi > 0.5 for _, lung, _, _ in lungs]
    hard_lung = sides[0] | sides[1]
    for _attempt in range(8):
        # redraw (deterministically) lesions that ended up mostly hidden
        # behind the heart/diaphragm or outside the visible lung
        if label == "pneumonia":
            op, region = _consolidation(lrng, x, y, lungs, f.size, e, marks)
            mask = region & hard_lung
            ok = mask.sum() >= 0.12 * hard_lung.sum()
        else:
            op, region = _ground_glass(lrng, x, y, lungs, f.size, e)
            mask = region & hard_lung
            ok = all((mask & sd).sum() >= 0.06 * sd.sum() for sd in sides)
        if ok:
            break
    if not mask.any():   # only at tiny sizes: keep the densest lung pixel(s)
        vis_op = op * lung_vis
        mask = vis_op >= 0.5 * vis_op.max()
    D += np.float32(f.p["air"]) * air_total * op * not_medi
    return mask


def _expose(f: _Frame, D: np.ndarray, seed: int) -> np.ndarray:
    """Attenuation D -> (size, size) uint8 radiograph: exposure curve, gamma, window, heel effect, noise."""
    f32, p, size = np.float32, f.p, f.size
    D = np.clip(D, 0, None)
    kk = f32(p["k"])
    I = (1 - np.exp(-kk * D)) / f32(1 - np.exp(-p["k"] * 1.05))
    I = np.clip(I, 0, 1) ** f32(p["gamma"])
    I = (I - f32(p["lo"])) / f32(p["hi"] - p["lo"])
    I *= 1 + f32(p["heel"]) * f.X + f32(p["heel_y"]) * f.Y
    nrng = np.random.default_rng([_SALT, seed, 2, size])
    noise = nrng.standard_normal((size, size)).astype(f32)
    noise = ndimage.gaussian_filter(noise, 0.6, truncate=2.5) * f32(1.6)
    I += f32(p["noise"]) * noise * (0.6 + 0.6 * np.sqrt(np.clip(I, 0, 1)))
    return np.clip(I * 255 + 0.5, 0, 255).astype(np.uint8)


def _lung_edge_d(g: dict, yv: float) -> float:
    """Lateral lung edge (distance from midline) at height ``yv``."""
    t = min(yv - g["yc"], 0.0) / g["H"]
    return g["dc"] + g["al"] * np.sqrt(max(1 - t * t, 0.0))


def _consolidation(rng, x, y, lungs, size, e, vessels):
    """Lobar consolidation in one lung -> (opacity, region mask)."""
    f32 = np.float32
    side = int(rng.integers(2))
    sgn, lung, dist, g = lungs[side]
    zone = rng.choice(3, p=[0.55, 0.30, 0.15])   # lower, middle, upper
    yap, ycp = g["yap"], g["ycp"]
    h = ycp - yap
    xs = f32(sgn) * x
    amp = rng.uniform(0.62, 0.82)
    ang = np.deg2rad(rng.uniform(-22, 22))
    nx, ny = np.sin(ang), np.cos(ang)       # fissure normal, pointing down
    if zone == 0:
        yf = yap + h * rng.uniform(0.50, 0.66)
        cy = yf + h * rng.uniform(0.18, 0.28)
        sgn_f = 1.0                          # lesion below the fissure
    elif zone == 1:
        yf = yap + h * rng.uniform(0.35, 0.48)
        cy = yf + h * rng.uniform(0.14, 0.22)
        sgn_f = 1.0
    else:
        yf = yap + h * rng.uniform(0.32, 0.45)
        cy = yf - h * rng.uniform(0.14, 0.22)
        sgn_f = -1.0
    cx = g["dc"] + (rng.uniform(-0.06, 0.10) if sgn < 0 else rng.uniform(0.0, 0.12))
    fiss = f32(sgn_f) * (f32(nx) * (xs - f32(cx)) + f32(ny) * (y - f32(yf)))
    sharp = _sig(fiss / (f32(0.8) * e))
    # soft, lobulated outer boundary
    R = rng.uniform(0.28, 0.40)
    th = np.arctan2(y - f32(cy), xs - f32(cx))
    harm = rng.normal(0, 0.08, size=4)
    ph = rng.uniform(0, 2 * np.pi, size=4)
    Rt = f32(R) * (1 + sum(f32(harm[i]) * np.cos(f32(i + 2) * th + f32(ph[i])) for i in range(4)))
    rr = np.hypot((xs - f32(cx)) / f32(1.15), (y - f32(cy)) / f32(0.9))
    blob = _sig((Rt - rr) / f32(0.05))
    tex = _field(rng, 10, size)
    op = f32(amp) * sharp * blob * (f32(0.9) + f32(0.1) * tex)
    # air bronchograms: the bronchovascular lines turn dark inside it
    op *= 1 - f32(0.35) * vessels * blob
    op *= lung
    region = op > f32(0.45 * amp)
    return np.clip(op, 0, 0.95), region


def _ground_glass(rng, x, y, lungs, size, e):
    """Bilateral peripheral ground-glass patches -> (opacity, region mask)."""
    f32 = np.float32
    op = np.zeros(x.shape, f32)
    amp = rng.uniform(0.32, 0.44)
    tex = _field(rng, 16, size)
    for sgn, lung, dist, g in lungs:
        xs = f32(sgn) * x
        n_p = int(rng.integers(2, 4))
        side_op = np.zeros(x.shape, f32)
        for j in range(n_p):
            # mostly lower zones: fraction down the lung height
            t = rng.uniform(0.62, 0.95) if j == 0 else rng.beta(3.0, 1.6) * 0.8 + 0.18
            yv = g["yap"] + t * (g["ycp"] - g["yap"])
            yv = min(yv, g["ycp"] - g["dh"] * 0.3)
            dl = _lung_edge_d(g, yv) - rng.uniform(0.03, 0.10)
            s_al = rng.uniform(0.10, 0.17)        # along the pleura
            s_ac = rng.uniform(0.065, 0.10)        # across
            # orientation: follow the lateral lung edge (roughly vertical)
            du, dv = xs - f32(dl), y - f32(yv)
            blob = np.exp(-0.5 * ((du / f32(s_ac)) ** 2 + (dv / f32(s_al)) ** 2))
            side_op = np.maximum(side_op, f32(rng.uniform(0.85, 1.15)) * blob)
        op += side_op * lung
    op = f32(amp) * np.clip(op, 0, 1.2) * (f32(0.75) + f32(0.25) * tex)
    region = op > f32(0.35 * amp)
    return np.clip(op, 0, 0.6), region
