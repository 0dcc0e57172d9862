"""What a training run is: one dataclass, saved into every checkpoint so a run can be resumed.

Fields left at None are filled in by `resolve(cfg)` when the run starts, from the data and the recipe
(see DATA_DEFAULTS and RECIPES), and the resolved values are what the run folder records. The comment
beside each field is also its `vitkit train --help` text.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    objective: str | None = None         # 'classify', 'distill' (default when --teacher is given); pretraining: 'mae', 'dino', 'mim'; 'seq2seq', 'caption'
    model: str | None = None             # registered model name (default: the --init file's, else one that fits the data)
    init: str | None = None              # start from this checkpoint: vitkit, timm, Hugging Face folder, torchvision, JAX npz
    data: str = "digits"                 # embedded set ('digits', 'mnist'), an image folder, or a folder with train/ and val/
    val_data: str | None = None          # a separate validation image folder (then --val-fraction may be 0)
    classes: str | None = None           # keep only these classes, comma-separated, e.g. '5,6,7,8,9'
    train_size: int | None = None        # use only this many training images (a class-stratified, seeded subset)
    name: str | None = None              # run folder under runs_dir; default "<model>-<data>"
    runs_dir: str = "runs"               # where run folders go
    recipe: str | None = None            # 'deit': DeiT's augmentation and regularisation for every field left unset
    epochs: int | None = None            # passes over the training split (default: 200 for digits, 30 otherwise)
    batch_size: int = 64                 # images per optimiser step, over all processes (the global batch)
    accum_steps: int | None = None       # micro-batches per step over all processes, a multiple of their number (default: one each)
    optimizer: str = "adamw"             # 'adamw' or 'sgd' (momentum 0.9, Nesterov)
    lr: float | None = None              # peak learning rate after warm-up (default: 2e-3; 5e-4 with --init)
    schedule: str = "cosine"             # 'cosine' (warm-up, then cosine to lr · min_lr_ratio) or 'noam' (warm-up, then 1/√step)
    min_lr_ratio: float = 0.01           # cosine decays to lr · min_lr_ratio
    warmup_epochs: float = 3.0           # linear warm-up from 0 to lr
    weight_decay: float = 0.05           # decoupled weight decay; never on norms, biases, position embeddings or tokens
    weight_decay_end: float | None = None  # a cosine from weight_decay to this over the run (DINO: 0.04 → 0.4); None: constant
    layer_decay: float | None = None     # layer-wise lr decay: block i of L gets lr · decay^(L - i), e.g. 0.65
    freeze: str | None = None            # 'backbone': train the classifier head only (a linear probe)
    label_smoothing: float | None = None  # cross-entropy label smoothing (default: 0.1)
    clip_grad: float | None = 1.0        # max global gradient norm, or None
    drop_path: float | None = None       # stochastic depth rate at the last block (default: 0; deit: 0.1)
    img_size: int | None = None          # training resolution; default: the data's (embedded) or the model's
    train_crop: str | None = None        # 'shift' (translate by crop_padding px), 'rrc' (random-resized-crop) or 'none'
    crop_padding: int = 1                # 'shift' crop: translate by up to this many pixels
    rrc_scale: float = 0.08              # 'rrc' crop: the smallest area fraction kept (largest: 1)
    crop_pct: float | None = None        # evaluation: resize the short side to img_size / crop_pct, centre-crop (default: 0.875 for folders, 1 for embedded)
    hflip: float | None = None           # horizontal flip probability (default: 0 for digits, 0.5 for folders)
    rand_magnitude: float | None = None  # RandAugment magnitude 0–10, 0 = off (deit: 9)
    rand_ops: int = 2                    # RandAugment operations per image
    mixup: float | None = None           # mixup alpha, 0 = off (deit: 0.8)
    cutmix: float | None = None          # cutmix alpha, 0 = off (deit: 1.0)
    mix_prob: float = 1.0                # probability that a batch is mixed at all
    mix_switch: float = 0.5              # probability of cutmix rather than mixup when both are on
    erase: float | None = None           # random-erasing probability, 0 = off (deit: 0.25)
    ema: float | None = None             # EMA decay of the weights, 0 = off (deit: 0.99996); evaluated and saved beside them
    teacher: str | None = None           # distillation: a vitkit checkpoint of any model (a CNN included), run frozen
    distill: str = "soft"                # 'soft': KL(student/τ ‖ teacher/τ)·τ²; 'hard': cross-entropy on the teacher's argmax
    distill_alpha: float = 0.5           # weight of the distillation loss (the label loss gets 1 - alpha)
    distill_tau: float = 1.0             # soft-distillation temperature τ
    val_fraction: float = 0.2            # held-out share, split by class with `seed` (0: with --val-data only)
    seed: int = 0                        # one seed for split, init, shuffling, augmentation, dropout
    device: str = "auto"                 # 'auto' (CUDA if present), 'cpu' or 'cuda'
    threads: int | None = None           # torch CPU threads per process (default: torch's)
    fsdp: bool = False                   # under torchrun: shard weights, gradients and optimiser state (FSDP2) instead of DDP
    amp: bool = True                     # bfloat16 autocast on CUDA (ignored on the CPU)
    num_workers: int = 0                 # DataLoader worker processes (image decoding)
    progress: bool = True                # show a progress bar over the whole run
    tensorboard: bool = False            # also write TensorBoard event files into the run folder
    model_overrides: dict = field(default_factory=dict)  # extra create_model options, e.g. {"depth": 4}

    @property
    def run_name(self) -> str:
        """--name, or "<model>-<data>" from the flags alone (the --init file's stem stands for its model)."""
        model = self.model or (Path(self.init).stem if self.init else default_model(self.data, objective_name(self)))
        return self.name or f"{model}-{self.data.rstrip('/').split('/')[-1]}"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name


# Fields that say how a run executes, not what it computes: they may differ when a run is resumed.
RUNTIME_FIELDS = {"device", "threads", "progress", "num_workers", "runs_dir", "tensorboard", "epochs", "fsdp"}

CHOICES = {"objective": (None, "classify", "distill", "mae", "dino", "mim", "seq2seq", "caption"), "schedule": ("cosine", "noam"), "optimizer": ("adamw", "sgd"), "freeze": (None, "backbone"),
           "train_crop": (None, "shift", "rrc", "none"), "distill": ("soft", "hard"), "recipe": (None, "deit")}

# The augmentation a data source gets for every field the user and the recipe leave unset.
EMBEDDED_DEFAULTS = dict(epochs=200, train_crop="shift", crop_pct=1.0, hflip=0.0)
FOLDER_DEFAULTS = dict(epochs=30, train_crop="rrc", crop_pct=0.875, hflip=0.5)
COMMON_DEFAULTS = dict(label_smoothing=0.1, drop_path=0.0, rand_magnitude=0.0, mixup=0.0, cutmix=0.0, erase=0.0,
                       ema=0.0)
# DeiT (Touvron et al., 2021, Table 9): RandAugment m9-mstd0.5, mixup 0.8, cutmix 1.0, erasing 0.25, smoothing 0.1,
# stochastic depth 0.1, EMA 0.99996. It keeps random-resized-crop and flips for photos; digits keep their shifts.
RECIPES = {"deit": dict(rand_magnitude=9.0, mixup=0.8, cutmix=1.0, erase=0.25, label_smoothing=0.1, drop_path=0.1,
                        ema=0.99996)}


def default_model(data: str, objective: str | None = None) -> str:
    if objective in ("seq2seq", "caption"):
        return "transformer_small" if objective == "seq2seq" else "caption_resnet_pico"
    return {"digits": "vit_pico_patch2_8", "mnist": "vit_pico_patch4_28"}.get(data, "vit_tiny_patch16_224")


def objective_name(cfg: TrainConfig) -> str:
    return cfg.objective or ("distill" if cfg.teacher else "classify")


def resolve(cfg: TrainConfig, *, embedded: bool, init_model: str | None = None) -> TrainConfig:
    """Every None field filled in: from the recipe, then the data source's defaults. Validates first."""
    validate(cfg)
    values: dict = {}
    values["objective"] = objective_name(cfg)
    values["model"] = cfg.model or init_model or default_model(cfg.data, values["objective"])
    values["lr"] = cfg.lr if cfg.lr is not None else (5e-4 if cfg.init else 2e-3)
    recipe = RECIPES.get(cfg.recipe or "", {})
    data_defaults = EMBEDDED_DEFAULTS if embedded else FOLDER_DEFAULTS
    for key, value in {**COMMON_DEFAULTS, **data_defaults}.items():
        current = getattr(cfg, key)
        values[key] = current if current is not None else recipe.get(key, value)
    out = dataclasses.replace(cfg, **values)
    if out.objective == "distill" and not out.teacher:
        raise ValueError("--objective distill needs --teacher CHECKPOINT (a vitkit checkpoint of the teacher)")
    if out.teacher and out.objective != "distill":
        raise ValueError(f"--teacher is given but the objective is {out.objective!r}; drop --objective or pass "
                         f"--objective distill")
    return out


def validate(cfg: TrainConfig) -> None:
    """Refuse values that cannot make a run, before anything starts; each message names the flag and the fix."""
    def bad(flag: str, value, want: str):
        raise ValueError(f"--{flag.replace('_', '-')} is {value!r} but must be {want}")

    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            bad(name, getattr(cfg, name), "one of " + ", ".join(repr(a) for a in allowed if a is not None))
    for name in ("lr", "weight_decay", "weight_decay_end", "clip_grad", "ema", "label_smoothing", "mixup", "cutmix", "rand_magnitude"):
        value = getattr(cfg, name)
        if value is not None and not value >= 0:  # `not >=` also catches NaN
            bad(name, value, "≥ 0")
    if cfg.lr is not None and cfg.lr == 0:
        bad("lr", cfg.lr, "> 0")
    for name in ("epochs", "batch_size", "accum_steps", "rand_ops", "train_size", "threads"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            bad(name, value, "a whole number ≥ 1")
    if cfg.num_workers < 0 or cfg.crop_padding < 0:
        bad("num_workers" if cfg.num_workers < 0 else "crop_padding", min(cfg.num_workers, cfg.crop_padding), "≥ 0")
    for name in ("drop_path", "label_smoothing", "hflip", "erase", "mix_prob", "mix_switch", "distill_alpha"):
        value = getattr(cfg, name)
        upper_open = name in ("drop_path", "label_smoothing")
        if value is not None and not (0 <= value < 1 if upper_open else 0 <= value <= 1):
            bad(name, value, "in [0, 1)" if upper_open else "in [0, 1]")
    if cfg.ema is not None and cfg.ema >= 1:
        bad("ema", cfg.ema, "a decay in [0, 1), e.g. 0.9998 (0 turns the EMA off)")
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        bad("layer_decay", cfg.layer_decay, "in (0, 1], e.g. 0.65")
    if cfg.crop_pct is not None and not 0 < cfg.crop_pct <= 1:
        bad("crop_pct", cfg.crop_pct, "in (0, 1], e.g. 0.875")
    if not 0 < cfg.rrc_scale <= 1:
        bad("rrc_scale", cfg.rrc_scale, "in (0, 1], e.g. 0.08")
    if not cfg.distill_tau > 0:
        bad("distill_tau", cfg.distill_tau, "> 0")
    if not cfg.warmup_epochs >= 0 or not 0 <= cfg.min_lr_ratio <= 1:
        bad("warmup_epochs" if not cfg.warmup_epochs >= 0 else "min_lr_ratio",
            cfg.warmup_epochs if not cfg.warmup_epochs >= 0 else cfg.min_lr_ratio, "≥ 0 (min_lr_ratio at most 1)")
    if cfg.val_fraction == 0 and not cfg.val_data and not _has_val_folder(cfg.data):
        bad("val_fraction", 0, "> 0 unless a validation folder is given (--val-data, or DATA/val)")
    if not 0 <= cfg.val_fraction < 1:
        bad("val_fraction", cfg.val_fraction, "in [0, 1), e.g. 0.2")
    if cfg.name is not None:
        root = Path(cfg.runs_dir).resolve()
        target = (root / cfg.name).resolve()
        if not cfg.name or target == root or root not in target.parents:
            raise ValueError(f"--name {cfg.name!r} would put the run outside --runs-dir {cfg.runs_dir}; "
                             f"pass a plain folder name such as 'my-run'")


def _has_val_folder(data: str) -> bool:
    return (Path(data) / "train").is_dir() and (Path(data) / "val").is_dir()


def load_config_file(path: str | Path) -> dict:
    """Run options from a YAML or JSON file (a run's own config.json works): {field: value}, keys checked."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--config {path} is a folder; pass the file inside it (a run folder holds "
                                f"config.json: --config {path / 'config.json'})")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except ImportError as e:
        raise ValueError(f"{path} is YAML, which needs PyYAML: pip install pyyaml (or write it as JSON)") from e
    except Exception as e:
        raise ValueError(f"{path} could not be parsed ({type(e).__name__}: {e}); fix the file") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, not {type(values).__name__}")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path} has unknown option(s) {', '.join(unknown)}; `vitkit train --help` lists them")
    return values
