"""The masked-image-modelling objective (BEiT, SimMIM), on the one trainer (labels are read and ignored).

    vitkit train --objective mim --data mnist --epochs 100                      # visual tokens (BEiT's target)
    vitkit train --objective mim --data mnist --opt target=pixels --name simmim   # pixels (SimMIM's)
    vitkit train --init runs/mim_vit_pico_patch4_28-mnist/best.safetensors --data mnist --train-size 500

--model names the encoder (a ViT such as vit_pico_patch4_28, or a BEiT) or the MIM model itself
(mim_vit_pico_patch4_28); its options go in with --opt (target=tokens|pixels, vocab_size=128, mask_ratio=0.4,
mask_min_patches=4). Each micro-batch draws its blockwise masks from its own generator, so resume and torchrun
stay exact. With target=tokens the k-means codebook (models/mim.py) is fitted on the training split's patches
before the first step (seeded, so every process fits the same one) and saved in every checkpoint; --init from a
MIM run keeps that run's codebook. Validation masks are fixed per image, so epochs compare:

    val_loss               cross-entropy (tokens) or mean absolute error (pixels) over the hidden patches (picks best)
    val_token_acc          tokens: share of hidden patches whose token is predicted exactly
    val_token_acc_majority tokens: the same for always guessing the training patches' most frequent token
    val_l1_patch_mean      pixels: the error of guessing each hidden patch's own mean value (not shown to the model)

After the last epoch, mim.png shows held-out images, what the encoder saw, and the prediction pasted into the
hidden patches (for tokens: the predicted tokens' centroids, beside the true tokens' — the best the codebook can
draw); codebook.json records the codebook's fit.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..data.augment import rng
from ..models.mae import patchify, unpatchify
from ..models.mim import MaskedImageModel
from .image_data import Transformed, eval_transform
from .mae import Indexed, image_columns
from .objective import register_objective
from .pretraining import Pretraining

VAL_KEY = 0x4D494D     # "MIM": validation masks are drawn from rng(seed, VAL_KEY, image index)
FIT_KEY = 0x4B4D       # "KM": the codebook's k-means draws from rng(seed, FIT_KEY)
FIT_IMAGES = 2000      # the codebook is fitted on the patches of up to this many training images


@register_objective
class MIM(Pretraining):
    name = "mim"
    prefix = "mim_"
    score = "val_loss"
    higher_is_better = False

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        self.plain_train = Transformed(self.train_set.ds, eval_transform(self.record))
        self.val_set = Indexed(self.val_set)
        self.codebook_fit: dict | None = None
        self.majority: int | None = None

    def describe(self) -> str:
        from ..registry import model_config
        mcfg = model_config(self.model_name, **self.model_overrides)
        target = f"{mcfg.vocab_size} k-means visual tokens" if mcfg.target == "tokens" else "pixels"
        return super().describe() + f", about {mcfg.mask_ratio:.0%} of the patches hidden in blocks, target {target}"

    def _patches(self, model: MaskedImageModel) -> Tensor:
        n = len(self.plain_train)
        step = max(1, -(-n // FIT_IMAGES))
        images = torch.stack([self.plain_train[i][0] for i in range(0, n, step)])
        return patchify(images, model.patch_size)

    def build_model(self):
        model = super().build_model()
        if model.codebook is not None and not model.codebook.fitted:
            self.codebook_fit = model.codebook.fit(self._patches(model), rng(self.cfg.seed, FIT_KEY))
            self.log(f"codebook: {model.cfg.vocab_size} k-means entries fitted on the training patches "
                     f"({self.codebook_fit['entries_used']} used), quantisation MSE "
                     f"{self.codebook_fit['quantisation_mse']:.4f} against a patch variance of "
                     f"{self.codebook_fit['patch_variance']:.4f}")
        return model

    def loss(self, model, batch, gen):
        images, _ = batch
        return model(images, generator=gen).loss, {}

    def _val_masks(self, mim: MaskedImageModel, index) -> Tensor:
        return torch.stack([mim.masking(1, rng(self.cfg.seed, VAL_KEY, int(i)))[0] for i in index])

    @torch.no_grad()
    def evaluate(self, model, loader, procs):
        mim: MaskedImageModel = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        tokens = mim.codebook is not None
        if tokens and self.majority is None:
            self.majority = int(torch.bincount(mim.codebook.encode(self._patches(mim)).flatten()).argmax())
        sums = torch.zeros(4, dtype=torch.float64)  # loss · hidden, correct / baseline error, majority hits, hidden
        for images, index in loader:
            images = images.to(self.device)
            out = model(images, mask=self._val_masks(mim, index).to(self.device))
            target, hidden = mim.targets(images)[out.mask], int(out.mask.sum())
            logits = out.logits[out.mask].float()
            if tokens:
                extra = [(logits.argmax(-1) == target).sum().item(), (target == self.majority).sum().item()]
            else:
                extra = [(target - target.mean(-1, keepdim=True)).abs().mean(-1).sum().item(), 0.0]
            sums += torch.tensor([out.loss.item() * hidden, *extra, hidden], dtype=torch.float64)
        model.train(was_training)
        procs.all_reduce(sums)
        n = float(sums[3])
        if tokens:
            return {"val_loss": float(sums[0]) / n, "val_token_acc": float(sums[1]) / n,
                    "val_token_acc_majority": float(sums[2]) / n}
        return {"val_loss": float(sums[0]) / n, "val_l1_patch_mean": float(sums[1]) / n}

    def finish(self, model, run_dir: Path) -> None:
        mim = getattr(model, "module", model)
        n = len(self.val_set)
        chosen = sorted({i * n // 6 for i in range(6)})  # spread through the split (it is ordered by class)
        images = torch.stack([self.val_set[i][0] for i in chosen])
        masks = self._val_masks(mim, chosen)
        mim_figure(mim, images, masks, self.record, run_dir / "mim.png")
        if self.codebook_fit is not None:
            (run_dir / "codebook.json").write_text(json.dumps(self.codebook_fit, indent=2) + "\n")


@torch.no_grad()
def mim_figure(mim: MaskedImageModel, images: Tensor, masks: Tensor, record: dict, path: Path) -> Path:
    """One row per image: the image, what the encoder saw (hidden patches grey), the prediction pasted into the
    hidden patches, and (tokens) the true tokens drawn from the codebook in the same places."""
    was_training = mim.training
    mim.eval()
    out = mim(images, mask=masks)
    mim.train(was_training)
    P, C = mim.patch_size, images.shape[1]
    patches = patchify(images, P)
    hidden = out.mask[..., None].expand_as(patches)

    def paste(pred_patches: Tensor) -> Tensor:
        return unpatchify(torch.where(hidden, pred_patches, patches), P, mim.grid, C)

    mean = torch.tensor(record["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(record["std"]).reshape(1, -1, 1, 1)
    grey = ((0.5 - mean) / std).reshape(-1).repeat(P * P).expand_as(patches)  # patchify's (row, column, channel)
    columns = {"image": images, f"seen ({1 - out.mask.float().mean():.0%})": paste(grey)}
    if mim.codebook is not None:
        centroids = mim.codebook.centroids.float()
        columns["predicted tokens"] = paste(centroids[out.logits.argmax(-1)])
        columns["true tokens"] = paste(centroids[mim.targets(images)])
        acc = (out.logits.argmax(-1) == mim.targets(images))[out.mask].float().mean()
        title = f"MIM (visual tokens) on held-out images: hidden-token accuracy {acc:.3f}"
    else:
        columns["prediction"] = paste(out.logits.float())
        title = f"MIM (pixels) on held-out images: hidden-patch L1 {out.loss:.4f}"
    return image_columns(columns, record, title, path)
