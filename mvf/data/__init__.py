"""Synthetic multi-view faces with ground truth, and the datasets that feed training.

* `mvf.data.synth`: the generator behind ``mvf synth`` (`generate`, `SynthGenerator`).
* `mvf.data.format`: the on-disk format (index.json, labels.npz, mesh.ply).
* `mvf.data.datasets`: `SynthDataset` (labelled) and `UnlabelledTriplets`.
* `mvf.data.augment`: label-preserving augmentation (`AugmentConfig`).
* `mvf.data.split`: `split_subjects`.
"""
from mvf.data.augment import AugmentConfig, augment_sample
from mvf.data.config import SynthConfig
from mvf.data.datasets import SynthDataset, UnlabelledTriplets, rescale_sample
from mvf.data.split import split_subjects

__all__ = ["AugmentConfig", "SynthConfig", "SynthDataset", "UnlabelledTriplets", "augment_sample",
           "rescale_sample", "split_subjects"]
