"""Figure of synthetic chest X-rays with lesion outlines: python scripts/make_phantom_figure.py docs/phantoms.png [SIZE] [SEEDS]"""
import sys

import numpy as np
from napari_gradcam.phantoms import make_xray, CLASSES
from skimage import segmentation
from PIL import Image, ImageDraw
out = sys.argv[1]; size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
seeds = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0, 1]
pad = 6; lab = 18
cols = [(c, s) for c in CLASSES for s in seeds]
W = len(cols) * (size + pad) + pad; Hh = 2 * (size + pad) + pad + lab
canvas = Image.new("RGB", (W, Hh), (255, 255, 255))
dr = ImageDraw.Draw(canvas)
for j, (c, s) in enumerate(cols):
    ph = make_xray(c, size, s)
    x0 = pad + j * (size + pad)
    dr.text((x0 + 4, 3), f"{c}  seed={s}", fill=(0, 0, 0))
    canvas.paste(Image.fromarray(ph.image).convert("RGB"), (x0, lab))
    rgb = np.repeat(ph.image[..., None], 3, -1)
    b = segmentation.find_boundaries(ph.mask, mode="inner")
    rgb[b] = (255, 40, 40)
    canvas.paste(Image.fromarray(rgb), (x0, lab + size + pad))
canvas.save(out, optimize=True)
