"""What a training run is: one dataclass, saved into every checkpoint so a run can be resumed."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    model: str = "vit_pico_patch2_8"     # registered model name (`vitkit models`)
    data: str = "digits"                 # embedded set ('digits', 'mnist') or an ImageFolder directory
    name: str | None = None              # run folder under runs_dir; default "<model>-<data>"
    runs_dir: str = "runs"               # where run folders go
    epochs: int = 200                    # passes over the training split
    batch_size: int = 64                 # images per optimiser step
    lr: float = 2e-3                     # peak learning rate (after warm-up)
    min_lr_ratio: float = 0.01           # cosine decays to lr · min_lr_ratio
    warmup_epochs: float = 3.0           # linear warm-up from 0 to lr
    weight_decay: float = 0.05           # AdamW decay; never on norms, biases, position embeddings or tokens
    label_smoothing: float = 0.1         # cross-entropy label smoothing
    clip_grad: float | None = 1.0        # max global gradient norm, or None
    drop_path: float = 0.0               # stochastic depth rate at the last block
    img_size: int | None = None          # training resolution; default: the data's (embedded) or the model's
    crop_padding: int = 1                # augmentation: random translation by up to this many pixels
    hflip: float = 0.0                   # augmentation: horizontal flip probability (0 for digits!)
    val_fraction: float = 0.2            # held-out share, split by class with `seed`
    seed: int = 0                        # one seed for split, init, shuffling and augmentation
    device: str = "auto"                 # 'auto' (CUDA if present), 'cpu' or 'cuda'
    amp: bool = True                     # bfloat16 autocast on CUDA (ignored on the CPU)
    num_workers: int = 0                 # DataLoader worker processes (ImageFolder decoding)
    progress: bool = True                # show a progress bar
    model_overrides: dict = field(default_factory=dict)  # extra create_model options, e.g. {"depth": 4}

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.data.rstrip('/').split('/')[-1]}"
