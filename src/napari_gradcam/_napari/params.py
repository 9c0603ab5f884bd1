"""Widget parameters as small evented dataclasses, and the binding of a form to them.

The fields declared with :func:`~.form.param` carry their form control (label, tooltip, choices, limits):
:func:`~.form.build_form` makes the form of them.

A widget's form controls and its parameter object stay equal both ways (:func:`bind`): the user edits
the form, code sets the object (or the control, which validates against its choices), and a run reads a
copy of the object taken when it starts (:func:`snapshot`), never the Qt controls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from psygnal import evented

from .form import param

PREDICTED = "predicted class"
ALL = "all classes"


#: how the maps of several classes share one brightness scale (Explain)
SCALE_CHOICES = [("× class probability", "probability"), ("shared (raw values)", "shared"),
                 ("each to its own maximum", "each")]
#: the methods of the Tiled tab, and its ways of choosing classes
TILED_METHODS = [("CAM", "cam"), ("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam++")]
CLASS_MODES = [("top-k", "topk"), ("all", "all"), ("chosen", "chosen")]
#: how feature maps are shown (Features)
DISPLAYS = [("stack (slider)", "stack"), ("grid", "grid")]


@evented
@dataclass
class ClassifyParams:
    every_slice: bool = param(False, "every slice of a stack",
                              "Classify all slices (a table) instead of the slice on screen.")


@evented
@dataclass
class ExplainParams:
    method: str = param("gradcam", "method", "Grad-CAM works at any convolutional layer; CAM needs a global-average-"
                        "pooling head and uses the layer feeding it. For small findings: LayerCAM at the 'fine' layer "
                        "preset (LayerCAM (fine)). Pixel attributions (saliency, integrated gradients, ...) work on "
                        "the input; signed ones show blue (against) and red (for the class).",
                        choices="_method_choices")
    target: str = param(PREDICTED, "target", "The class to explain: the predicted one, any class, or all classes.",
                        choices="_target_choices")
    scale: str = param("probability", "scale", "How the maps of all classes share one brightness scale: times each "
                       "class's probability (a class with p = 0 stays dark), the raw values on one scale, or each "
                       "map to its own maximum.", choices=SCALE_CHOICES)
    layer: str = param("", "layer", "The layer whose activations are weighted (default: the Model widget's); "
                       "'fine' fuses the model's last three resolution stages.", choices="_layer_choices")
    shifts: int = param(1, "sub-cell shifts", "k > 1: average the maps of k x k copies of the image shifted by "
                        "fractions of a heatmap cell, for a k times finer map (k*k passes). 1 = off.", min=1, max=8)
    keep: bool = param(False, "keep previous heatmaps")


@evented
@dataclass
class CompareParams:
    target: str = param(PREDICTED, "class", "The class every method explains (default: the predicted one).",
                        choices="_target_choices")
    layer: str = param("", "layer", "The layer of the layer methods (CAM always uses its own; pixel attributions "
                       "none).", choices="_layer_choices")
    methods: tuple = param((), "methods", "The methods to compare (Ctrl-click to pick several). The slow ones "
                           "(Score-CAM, occlusion: one pass per channel or square) are off by default.",
                           choices="_method_choices", widget="Select")


@evented
@dataclass
class TiledParams:
    method: str = param("cam", "method", "The map of each tile: CAM (one pass for all classes), Grad-CAM or "
                        "Grad-CAM++.", choices=TILED_METHODS)
    tile: int = param(0, "tile size (0: auto)", "Tile side in image pixels. 0: the model's training scale, the "
                      "typical size of the model's training images, recorded when it was trained (else its input "
                      "size), so that a tile shows what one training image showed. Tiles are resized to the "
                      "model's input size.", min=0, max=8192, step=16)
    overlap: float = param(0.5, "overlap", "Share of a tile that overlaps its neighbour.", min=0.0, max=0.9, step=0.05)
    class_mode: str = param("all", "classes", "Which classes get a map: the k most probable, all, or chosen ones.",
                            choices=CLASS_MODES)
    k: int = param(2, "k", "How many of the most probable classes.", min=1, max=100)
    chosen: tuple = param((), "chosen", "The classes to map (Ctrl-click to pick several).", choices="_class_choices",
                          widget="Select")
    keep: bool = param(False, "keep previous tiled maps")


@evented
@dataclass
class FeatureParams:
    layer: str = param("", "layer", "The layer whose channels are shown (default: the Model widget's).",
                       choices="_layer_choices")
    count: int = param(16, "channels", "How many of the most active channels (highest mean activation) to show.",
                       min=1, max=512)
    display: str = param("stack", "display", "A stack over the image (a slider picks the channel) or a grid of all "
                         "channels beside it.", choices=DISPLAYS)
    keep: bool = param(False, "keep previous feature maps")


@evented
@dataclass
class LocalisationParams:
    tolerance: float = param(15.0, "pointing tolerance (px)", "A heatmap maximum this close to the outline counts "
                             "as a hit (Zhang et al. use 15 px at 224 px).", min=0.0, max=10_000.0, step=1.0)
    level: float = param(0.5, "fixed threshold (× max)", "IoU / Dice of the heatmap pixels >= this fraction of its "
                         "maximum.", min=0.0, max=1.0, step=0.05)
    curves: bool = param(False, "deletion / insertion curves (needs the model)", "Also run the model on the "
                         "heatmap's source image with its most relevant pixels deleted / inserted (slower).")


#: the Train tab's devices and ways of weighting the classes
DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHTING = [("balanced loss", "balanced"), ("balanced sampling", "sampler"), ("none", "none")]


@evented
@dataclass
class TrainParams:
    data_dir: str = param("", "data folder", "A folder with one sub-folder of images per class.", widget="FileEdit",
                          mode="d")
    output: str = param("", "save as", "Where the best model is written (default: ~/napari-gradcam-models/).",
                        widget="FileEdit", mode="w", filter="*.safetensors")
    architecture: str = param("simple_cnn", "architecture", choices="_architecture_choices")
    image_size: int = param(128, "image size", min=16, max=1024, step=16)
    epochs: int = param(10, "epochs (at most)", "Passes over the training images, at most: on a CPU the run also "
                        "stops when its time budget is spent, keeping the best epoch.", min=1, max=1000)
    batch_size: int = param(32, "batch size", min=1, max=1024)
    lr: str = param("0.001", "learning rate", "Peak learning rate (the schedule warms up to it, then anneals).")
    augment: bool = param(True, "augmentation (small rotations, shifts, zoom, contrast)")
    val_fraction: float = param(0.2, "validation share", min=0.05, max=0.5, step=0.05)
    weighting: str = param("balanced", "class weighting", choices=WEIGHTING)
    device: str = param("auto", "device", choices=list(DEVICES))
    unlearn: str = param("", "unlearn (audit)", "An audit folder (Audit tab or `napari-gradcam audit`): the chosen "
                         "finding's region is pasted into images of every class during training (A-ClArC), so the "
                         "model cannot use it. Empty: none.", widget="FileEdit", mode="d")
    finding: str = param("every likely shortcut", "finding", choices="_finding_choices")


@evented
@dataclass
class EvaluateParams:
    folder: str = param("", "data folder", "A folder with one sub-folder of images per class, named like the "
                        "model's classes.", widget="FileEdit", mode="d")
    groups: str = param("", "subgroups (optional)", "A CSV naming the images (path or file column) and their "
                        "subgroup, or an audit folder's images.csv (its clusters).", widget="FileEdit", mode="r",
                        filter="*.csv")
    group_column: str = param("", "subgroup column", "The CSV's column of subgroups (empty: 'group' or 'cluster').")
    bootstrap: int = param(1000, "bootstrap resamples", "Resamples of each 95 % interval; patients (from file names "
                           "or a manifest.csv) are resampled whole. 0: no intervals.", min=0, max=100_000, step=100)


#: what the Audit tab audits
AUDIT_SOURCES = [("a folder", "folder"), ("an image stack layer", "stack")]


@evented
@dataclass
class AuditParams:
    source: str = param("folder", "audit", choices=AUDIT_SOURCES)
    folder: str = param("", "folder", "Images in class subfolders named like the model's classes (or without "
                        "labels).", widget="FileEdit", mode="d")
    masks: "str | None" = param(None, "masks", "Optional: masks (e.g. lungs) with the images' relative names.",
                       widget="FileEdit", mode="d", nullable=True)
    mask_layer: str = param("(none)", "masks", "Optional: a Labels layer with one mask per plane of the stack.",
                            choices="_labels_choices")
    method: str = param("gradcam", "method", choices="_method_choices")
    model_layer: str = param("(default)", "layer", choices="_model_layer_choices")
    max_clusters: int = param(8, "max clusters", min=1, max=20)


#: the classes the Model tab builds by default
DEFAULT_CLASSES = "normal, pneumonia, covid"
MODEL_FILES = "Model files (*.safetensors *.pt *.pth *.bin *.onnx)"


@evented
@dataclass
class ModelParams:
    file: str = param("", "file", "A napari-gradcam .safetensors bundle, or a PyTorch state dict (.pt/.pth: then "
                      "give architecture and classes below), or an ONNX model (.onnx: give the classes).",
                      widget="FileEdit", mode="r", filter=MODEL_FILES)
    architecture: str = param("simple_cnn", "architecture", choices="_architecture_choices")
    classes: str = param(DEFAULT_CLASSES, "classes", "Class names, comma separated (for building, or for bare "
                         "state dicts).")
    in_channels: "str | int" = param("auto", "channels", "Input channels; 'auto' reads them from the weights "
                                     "(building: 1).", choices=["auto", 1, 3])
    input_size: int = param(224, "input size", min=16, max=4096, step=16)
    mean: str = param("auto", "mean", "Input normalisation: the mean the model was trained with, one number per "
                      "channel (e.g. 0.485, 0.456, 0.406), or 'auto' (the file's, else the architecture's default). "
                      "For building and for bare .pt/.pth or ONNX files.")
    std: str = param("auto", "std", "Input normalisation: the standard deviation, one number per channel "
                     "(e.g. 0.229, 0.224, 0.225), or 'auto'. Give mean and std together.")
    device: str = param("auto", "device", choices=list(DEVICES))
    target_layer: str = param("", "target layer", "The layer Grad-CAM explains by default (the last convolutional "
                              "block is the usual choice).", choices="_layer_choices")


def snapshot(params, **overrides):
    """A copy of ``params`` for a run (later edits of the form do not reach it), with ``overrides`` (None
    values ignored) replacing fields; an unknown field name is a TypeError."""
    return replace(params, **{k: v for k, v in overrides.items() if v is not None})


def adopt(params, **overrides):
    """A run's parameters: ``overrides`` (None values ignored) set on ``params`` (so the bound form shows what
    the run uses: the controls follow the parameters, never the other way round here), and a copy of the
    result for the run (:func:`snapshot`: later edits of the form do not reach it)."""
    for name, value in overrides.items():
        if value is not None and getattr(params, name) != value:
            setattr(params, name, value)
    return snapshot(params)


def as_dict(params) -> dict:
    return asdict(params)
