"""The MAE objective: masked-autoencoder pretraining on the images alone (labels are read and ignored).

    vitkit train --objective mae --data mnist --epochs 100        # pretrain vit_pico_patch4_28's encoder
    vitkit train --init runs/mae-mnist/best.safetensors --data mnist --train-size 500   # fine-tune it

--model names the encoder (a ViT such as vit_pico_patch4_28) or the MAE itself (mae_vit_pico_patch4_28);
decoder options go in with --opt (decoder_depth=2, mask_ratio=0.75, norm_pix_loss=true). Each micro-batch
draws its masks from its own generator, so resume and torchrun stay exact. Validation masks are fixed per
image (keyed by the seed and the image's index), so the validation figures of two epochs compare:

    val_mse             the loss: mean squared error over the removed patches (lower is better; picks best)
    val_mse_mean_image  the same for a guess of the training images' mean: a model that ignores what it sees
    val_mse_patch_mean  the same for a guess of each removed patch's own mean value (which the model is not
                        shown): beating it means predicting the structure inside a patch

The run's checkpoints hold the whole MAE; `--init` and `load_pretrained(path, VIT_NAME)` take its encoder,
a plain ViT. After the last epoch, reconstruction.png shows held-out images, what the encoder saw, and the
reconstruction.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data.augment import rng
from ..models.mae import MaskedAutoencoder, patchify, unpatchify
from .image_data import Transformed, eval_transform
from .objective import register_objective
from .pretraining import Pretraining

VAL_KEY = 0x4D4145  # "MAE": validation masks are drawn from rng(seed, VAL_KEY, image index)


class Indexed(Dataset):
    """(image, index) pairs of `ds`: the index keys the image's fixed validation mask."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.ds[i][0], i


def _mean_image(ds: Dataset, most: int = 2000) -> Tensor:
    """The mean (C, H, W) of up to `most` images of `ds`, evenly spaced through it."""
    step = max(1, len(ds) // most)
    return torch.stack([ds[i][0] for i in range(0, len(ds), step)]).mean(dim=0)


@register_objective
class MAE(Pretraining):
    name = "mae"
    prefix = "mae_"
    score = "val_mse"
    higher_is_better = False

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        self.mean_image = _mean_image(Transformed(self.train_set.ds, eval_transform(self.record)))
        self.val_set = Indexed(self.val_set)

    def describe(self) -> str:
        return super().describe() + f", {self.mask_ratio:.0%} of the patches masked"

    @property
    def mask_ratio(self) -> float:
        from ..registry import model_config
        return model_config(self.model_name, **self.model_overrides).mask_ratio

    def loss(self, model, batch, gen):
        images, _ = batch
        return model(images, generator=gen).loss, {}

    @torch.no_grad()
    def evaluate(self, model, loader, procs):
        mae: MaskedAutoencoder = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64)  # model MSE, mean-image MSE, patch-mean MSE, images
        mean_target = mae.targets(self.mean_image[None].to(self.device))  # (1, N, P·P·C)
        for images, index in loader:
            images = images.to(self.device)
            noise = torch.stack([torch.rand(mae.num_patches, generator=rng(self.cfg.seed, VAL_KEY, int(i)))
                                 for i in index])
            out = model(images, noise=noise.to(self.device))
            target = mae.targets(images)
            removed = out.mask.sum(dim=1)
            mse = (((out.pred.float() - target) ** 2).mean(-1) * out.mask).sum(1) / removed
            average = (((mean_target - target) ** 2).mean(-1) * out.mask).sum(1) / removed
            own_mean = (target.var(dim=-1, unbiased=False) * out.mask).sum(1) / removed
            sums += torch.tensor([mse.sum().item(), average.sum().item(), own_mean.sum().item(), len(images)],
                                 dtype=torch.float64)
        model.train(was_training)
        procs.all_reduce(sums)
        n = float(sums[3])
        return {"val_mse": float(sums[0]) / n, "val_mse_mean_image": float(sums[1]) / n,
                "val_mse_patch_mean": float(sums[2]) / n}

    def finish(self, model, run_dir: Path) -> None:
        mae = getattr(model, "module", model)
        n = len(self.val_set)
        chosen = sorted({i * n // 6 for i in range(6)})  # spread through the split (it is ordered by class)
        images = torch.stack([self.val_set[i][0] for i in chosen])
        noise = torch.stack([torch.rand(mae.num_patches, generator=rng(self.cfg.seed, VAL_KEY, i)) for i in chosen])
        reconstruction_figure(mae, images, noise, self.record, run_dir / "reconstruction.png")


@torch.no_grad()
def reconstruction_figure(mae: MaskedAutoencoder, images: Tensor, noise: Tensor, record: dict, path: Path) -> Path:
    """One row per image: the image, what the encoder saw (removed patches grey), the reconstruction, and the
    reconstruction with the seen patches pasted back (as MAE's paper shows them)."""
    was_training = mae.training
    mae.eval()
    out = mae(images, noise=noise)
    mae.train(was_training)
    recon = mae.reconstruct(out.pred.float(), images)
    hidden = out.mask[..., None].expand(-1, -1, mae.patch_size ** 2 * images.shape[1])
    patches = patchify(images, mae.patch_size)
    seen = unpatchify(patches * (1 - hidden), mae.patch_size, mae.grid, images.shape[1])
    pasted = unpatchify(torch.where(hidden.bool(), patchify(recon, mae.patch_size), patches), mae.patch_size,
                        mae.grid, images.shape[1])
    mean = torch.tensor(record["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(record["std"]).reshape(1, -1, 1, 1)
    gray = (0.5 - mean) / std  # removed patches shown mid-grey
    seen = torch.where(unpatchify(hidden, mae.patch_size, mae.grid, images.shape[1]).bool(), gray, seen)
    columns = {"image": images, f"seen ({1 - out.mask[0].mean():.0%})": seen, "reconstruction": recon,
               "reconstruction + seen": pasted}
    mse = (((out.pred.float() - mae.targets(images)) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    return image_columns(columns, record, f"MAE on held-out images: masked-patch MSE {mse:.4f}", path)


def image_columns(columns: dict[str, Tensor], record: dict, title: str, path: Path) -> Path:
    """A figure of columns of normalised images (B, C, H, W) each, one row per image, un-normalised with the
    record's mean and std: what the masked-modelling objectives draw."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = torch.tensor(record["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(record["std"]).reshape(1, -1, 1, 1)
    rows = len(next(iter(columns.values())))
    fig, axes = plt.subplots(rows, len(columns), figsize=(2 * len(columns), 2 * rows), squeeze=False)
    for c, (name, batch) in enumerate(columns.items()):
        pixels = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(pixels[r].squeeze(-1) if pixels.shape[-1] == 1 else pixels[r], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
