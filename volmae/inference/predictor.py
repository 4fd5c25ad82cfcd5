"""Sliding-window segmentation with MONAI's inferer, and mapping predictions back to the input's original space.

``Predictor.logits`` runs ``monai.inferers.sliding_window_inference`` (gaussian blending by default) with AMP on
CUDA; ``Predictor.predict_file`` preprocesses a file with the task's preset, segments it and inverts every spatial
step (``Invertd``: spacing, orientation, crops) so the label map has the input's shape and affine. A predictor is
made from a model artifact (:meth:`Predictor.from_artifact`; :func:`predictor_for` resolves ``--model`` /
``--bundle``), or around a network in memory (fine-tuning's validation).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, Invertd, apply_transform

from volmae.artifact.bundles import open_model
from volmae.artifact.model import ModelArtifact
from volmae.data.regions import check_regions, regions_to_labels
from volmae.data.transforms import Preprocessing, infer_transforms
from volmae.inference.compiled import CompiledWindows
from volmae.utils.runtime import autocast, check_cpu_bf16, sync

__all__ = ["Predictor", "Prediction", "largest_component", "predictor_for"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (any leading singleton axes kept).

    Ours because MONAI's ``KeepLargestConnectedComponent`` needs scikit-image (or cuCIM), which volmae does not
    depend on; ``scipy.ndimage.label`` does the same job.
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


@dataclass
class Prediction:
    """A label map in the original image space: ``labels`` ``1 X Y Z``, with ``affine`` the input's 4x4 affine;
    ``probabilities`` (when asked for) ``K D H W`` on the network's grid
    (the preset's orientation and spacing), its own affine in ``probabilities.affine``."""

    labels: MetaTensor
    affine: torch.Tensor
    probabilities: MetaTensor | None = None


class Predictor:
    """Segment volumes with a trained network.

    Args:
        model: network mapping ``B C roi -> B K roi`` logits.
        prep: the task's preprocessing (its ``roi_size`` is the window).
        device: where the network runs; windows are stitched on ``stitch_device`` (default: same device;
            ``"auto"``: on the CPU when the stitched volume would take more than half the free GPU memory, MONAI's
            ``sw_device`` / ``device`` split, so a 512 x 512 x 300 CT fits a small GPU).
        sw_batch_size: windows per forward pass. overlap: window overlap in [0, 1). mode: ``gaussian`` or
        ``constant`` blending.
        tta_flips: mirroring test-time augmentation: probabilities are averaged over the unflipped input and one
        flip per listed spatial axis (use only axes the model was trained to be symmetric under).
        largest_component: keep only the largest connected component of each class (MONAI
        ``KeepLargestConnectedComponent``), for single-structure organs.
        regions: for a network with one sigmoid output per nested label region (BraTS TC / WT / ET), the label
        values of each channel; the regions thresholded at 0.5 are turned back into one label map
        (:func:`volmae.data.regions.regions_to_labels`). Without: softmax over labels, argmax.
        progress: a progress bar over the sliding windows (MONAI's, tqdm).
        compile: run the windows through ``torch.compile`` (inductor, frozen weights, one batch shape:
            :class:`~volmae.inference.compiled.CompiledWindows`); the first volume pays the compilation (about a
            minute for UNETR-B on the CPU, less from inductor's on-disk cache), later windows run faster.
        amp: autocast on CUDA (bf16, else fp16). cpu_bf16: bf16 autocast on the CPU, off by default: it pays on
            CPUs with AMX or AMD Zen 4+ (:func:`~volmae.utils.runtime.cpu_has_bf16_units`; elsewhere a warning says
            it will likely be slower) and changes outputs as GPU autocast does (stitching and softmax stay fp32).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prep: Preprocessing,
        device: torch.device,
        sw_batch_size: int = 4,
        overlap: float = 0.5,
        mode: str = "gaussian",
        amp: bool = True,
        stitch_device: torch.device | str | None = None,
        tta_flips: Sequence[int] = (),
        largest_component: bool = False,
        regions=None,
        progress: bool = False,
        compile: bool = False,
        cpu_bf16: bool = False,
    ) -> None:
        check_cpu_bf16(device, cpu_bf16)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap={overlap}: must be in [0, 1)")
        if mode not in ("gaussian", "constant"):
            raise ValueError(f"mode={mode!r}: expected 'gaussian' or 'constant'")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size={sw_batch_size}: must be >= 1")
        if any(a not in (0, 1, 2) for a in tta_flips):
            raise ValueError(f"tta_flips={tuple(tta_flips)}: spatial axes are 0, 1 and 2")
        self.model, self.prep, self.device = model, prep, device
        self.sw_batch_size, self.overlap, self.mode, self.amp = sw_batch_size, overlap, mode, amp
        self.cpu_bf16 = cpu_bf16
        self.stitch_device = stitch_device or device  # torch.device or "auto"
        self.tta_flips = tuple(tta_flips)
        self.largest_component = largest_component
        self.regions = check_regions(regions) if regions else None
        self.progress = progress
        self.network = CompiledWindows(model, sw_batch_size) if compile else model  # what the windows run through
        self.timings: dict[str, float] | None = None  # a dict: predict_file adds each phase's seconds to it
        self.task = None  # the model's Task, when made from an artifact
        self._transform = infer_transforms(prep)

    @classmethod
    def from_artifact(
        cls, model: ModelArtifact, device: torch.device, roi_size: Sequence[int] | None = None, **kwargs
    ) -> Predictor:
        """A predictor for a segmentation model (network, preprocessing, labels and outputs from the artifact);
        ``roi_size`` re-grids the network for another sliding window (:meth:`ModelArtifact.build`)."""
        model.expect("segmentation")
        task = model.task if roi_size is None else model.task.with_window(roi_size)
        pred = cls(model.build(roi_size).to(device), task.preprocessing, device, regions=task.regions, **kwargs)
        pred.task = task
        return pred

    @torch.no_grad()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """``B C D H W`` preprocessed image -> ``B K D H W`` float32 logits (stitched)."""
        self.model.eval()
        x = image.as_tensor() if isinstance(image, MetaTensor) else image
        network = self._timed_network if self.timings is not None else self.network
        with autocast(self.device, self.amp or self.cpu_bf16, self.cpu_bf16):
            out = sliding_window_inference(
                x.to(self.device),
                self.prep.roi_size,
                self.sw_batch_size,
                network,
                overlap=self.overlap,
                mode=self.mode,
                sw_device=self.device,
                device=self._stitch_on(x),
                progress=self.progress,
            )
        return out.float()

    def _timed_network(self, x: torch.Tensor) -> torch.Tensor:
        """The network, its wall time (device synchronised) added to ``timings["network"]``."""
        sync(self.device)
        t = time.perf_counter()
        out = self.network(x)
        sync(self.device)
        self.timings["network"] = self.timings.get("network", 0.0) + time.perf_counter() - t
        return out

    def _stitch_on(self, x: torch.Tensor) -> torch.device:
        if self.stitch_device != "auto":
            return self.stitch_device
        if self.device.type != "cuda":
            return self.device
        free, _ = torch.cuda.mem_get_info(self.device)
        # stitched logits + weight map + the TTA sum, float32
        need = 4 * x.shape[0] * (self.model_out_channels + 2) * x[0, 0].numel()
        return self.device if need < free / 2 else torch.device("cpu")

    @property
    def model_out_channels(self) -> int:
        return int(getattr(self.model, "out_channels", 1))

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``B K D H W`` class probabilities (softmax, or sigmoid when multi-label), averaged over TTA flips."""
        act = torch.sigmoid if self.regions else (lambda t: torch.softmax(t, dim=1))
        dims = [(), *[(a + 2,) for a in self.tta_flips]]
        total = None
        for d in dims:
            x = image.flip(d) if d else image
            p = act(self.logits(x))
            p = p.flip(d) if d else p
            total = p if total is None else total.add_(p)
        return total / len(dims)

    def discretize(self, probs: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Probabilities (or, with ``logits=True``, logits) -> ``B 1 D H W`` label map. Logits give the same result
        without the softmax / sigmoid pass: argmax is unchanged by softmax, and sigmoid(z) > 0.5 exactly where
        z > 0."""
        if self.regions:
            seg = (probs > (0.0 if logits else 0.5)).to(torch.uint8)
            seg = torch.stack([regions_to_labels(s, self.regions) for s in seg])
        else:
            seg = probs.argmax(dim=1, keepdim=True).to(torch.uint8)
        if self.largest_component:
            seg = torch.stack([self._keep_largest(s) for s in seg])
        return seg

    def _keep_largest(self, seg: torch.Tensor) -> torch.Tensor:
        """``K D H W`` -> the same with each class / channel reduced to its largest 26-connected component."""
        arr = seg.cpu().numpy()
        out = np.zeros_like(arr)
        for c in np.unique(arr):
            if c > 0:
                out[largest_component(arr == c)] = c
        return torch.from_numpy(out).to(seg.device)

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """``B C D H W`` preprocessed image -> discrete segmentation (see :meth:`discretize`); without TTA straight
        from the logits (no ``B K D H W`` probability volume: 2.9 GB less for a 14-class 512 x 512 x 200 CT)."""
        scores, from_logits = self._scores(image, probabilities=False)
        return self.discretize(scores, logits=from_logits)

    def _scores(self, image: torch.Tensor, probabilities: bool) -> tuple[torch.Tensor, bool]:
        """``(scores, are_logits)``: probabilities when asked for or when TTA averages them, else the logits
        (:meth:`discretize` needs no softmax pass)."""
        if probabilities or self.tta_flips:
            return self.probabilities(image), False
        return self.logits(image), True

    def preprocess(self, image: str | list[str] | Mapping) -> dict:
        data = {"image": image} if not isinstance(image, Mapping) else {"image": image["image"]}
        if self.timings is None:
            return self._transform(data)
        load, *rest = self._transform.transforms  # LoadImaged first (infer_transforms), timed apart
        with self._phase("load"):
            data = apply_transform(load, data)
        with self._phase("preprocess"):
            return Compose(rest)(data)  # the same transform objects: Invertd still inverts them

    @contextlib.contextmanager
    def _phase(self, name: str):
        if self.timings is None:
            yield
            return
        sync(self.device)
        t = time.perf_counter()
        yield
        sync(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t

    def predict_file(self, image: str | list[str] | Mapping, keep_probabilities: bool = False) -> Prediction:
        """Preprocess, segment and invert back to the original grid of ``image`` (path, channel list or item).

        With :attr:`timings` set to a dict, the wall seconds of each phase are added to it: ``load``,
        ``preprocess``, ``network`` (the network calls), ``stitch`` (the rest of the sliding window: cropping,
        blending), ``postprocess`` (softmax / argmax / components) and ``invert`` (back to the input's grid)."""
        data = self.preprocess(image)
        img = data["image"]
        with self._phase("windows"):
            scores, from_logits = self._scores(img[None], probabilities=keep_probabilities)
        kept = MetaTensor(scores[0].cpu(), affine=img.affine) if keep_probabilities else None
        with self._phase("postprocess"):
            seg = self.discretize(scores, logits=from_logits)[0].cpu()
        del scores
        if self.timings is not None:  # TTA's softmax passes count as stitching
            self.timings["stitch"] = self.timings.pop("windows") - self.timings.get("network", 0.0)
        with self._phase("invert"):
            data["pred"] = MetaTensor(seg, meta=dict(img.meta), applied_operations=list(img.applied_operations))
            inverted = Invertd("pred", self._transform, orig_keys="image", nearest_interp=True, to_tensor=True)(data)
            pred = inverted["pred"]  # nearest-neighbour resampled, but float: back to integer labels
            pred = pred.round().to(torch.uint8 if self.model_out_channels < 256 else torch.int16)
        return Prediction(pred, torch.as_tensor(pred.affine), kept)


def predictor_for(cfg, device: torch.device, model: ModelArtifact | None = None, **extra) -> Predictor:
    """A :class:`Predictor` for ``model``, else the model a stage config names (``cfg.model`` and / or
    ``cfg.bundle``: :func:`volmae.artifact.bundles.open_model`), with the config's window / TTA fields
    (``sw_batch_size``, ``overlap``, ``amp``, ``tta_flips``, ``largest_component``, ``compile``, ``cpu_bf16``), as
    ``volmae-evaluate`` and ``volmae-infer`` share."""
    return Predictor.from_artifact(
        model if model is not None else open_model(cfg.model, getattr(cfg, "bundle", None)),
        device,
        sw_batch_size=cfg.sw_batch_size,
        overlap=cfg.overlap,
        amp=cfg.amp,
        tta_flips=cfg.tta_flips or (),
        largest_component=cfg.largest_component,
        compile=cfg.compile,
        cpu_bf16=getattr(cfg, "cpu_bf16", False),
        **extra,
    )
