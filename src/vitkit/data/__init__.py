"""Data: embedded data sets (digits, mnist), image folders, a stratified split, PNG export, tensor transforms."""
from .augment import (RAND_INCREASING_OPS, RandAugment, hflip, mix_batch, rand_augment_op, random_erasing,
                      random_resized_crop, random_resized_crop_box, resize_center_crop, rng, rng_seed,
                      soft_target_cross_entropy)
from .datasets import (EMBEDDED, IMAGE_EXTENSIONS, DataError, ImageFolder, TensorImageDataset, build_dataset,
                       dataset_classes, dataset_labels, export_images, load_embedded, load_image, split)
from .transforms import EvalTransform, TrainAugment, center_crop, normalize, random_crop, random_hflip, resize

__all__ = [
    "EMBEDDED", "IMAGE_EXTENSIONS", "DataError", "EvalTransform", "ImageFolder", "TensorImageDataset",
    "TrainAugment", "build_dataset", "center_crop", "dataset_classes", "dataset_labels", "export_images",
    "load_embedded", "load_image", "normalize", "random_crop", "random_hflip", "resize", "split",
]
