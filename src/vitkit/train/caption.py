"""The captioning objective: an image encoder and an attending decoder, on the one trainer.

    vitkit train --objective caption --data digit-strips --epochs 20             # caption_resnet_pico
    vitkit train --objective caption --model caption_show_attend_tell --data digit-strips
    vitkit train --objective caption --data photos/ --opt img_size=[224,224]      # photos/captions.txt

--data `digit-strips` composes strips of 1–4 MNIST digits (data/strips.py; --train-size strips, default
8,000, from the training split's digit images; 1,000 validation strips from the held-out ones only). A folder
is read with its captions.txt ('file name<TAB>caption' lines; a vocabulary is built from the training
captions). --init takes a checkpoint for the image encoder (a ViT trained on MNIST, say: its position
embeddings are resized to the strip), or a captioning run to continue. The loss is label-smoothed
cross-entropy over the caption tokens, plus Show-Attend-Tell's attention regulariser where the model has one.

    val_exact      share of validation captions that greedy decoding gets exactly right (picks best)
    val_token_acc  share of the caption's tokens (EOS included) that greedy decoding gets right, position by position
    val_word_acc   the same over the caption's words alone (EOS left out): per digit, for the digit strips
    val_bleu       corpus BLEU-4 of the greedy captions (sacrebleu)

After the last epoch, captions.json compares greedy decoding with beam search on the validation split, and
for the digit strips records where the attention lands: for each digit of a held-out strip, whether the
largest cross-attention weight (last layer, averaged over heads, under teacher forcing) falls on a position
inside that digit's horizontal span. attention.png draws those maps for a few strips.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import build_dataset, split
from ..data import sequences as seq
from ..data import strips
from ..generate import beam_search, greedy
from ..registry import create_model, get_entry, model_config
from .objective import Objective, register_objective
from .seq2seq import smoothed_cross_entropy

TRAIN_KEY, VAL_KEY = 0x4354, 0x4356  # "CT", "CV"
STRIPS, VAL_STRIPS = 8_000, 1_000
BEAM = 4


def caption_metrics(pred: Tensor, target: Tensor, vocab: seq.Vocabulary) -> dict[str, float]:
    """pred, target: (B, L) ids after BOS (EOS, then padding). Exact match, per-token accuracy over the target's
    tokens (EOS included), per-word accuracy over its words alone (for digit strips: per digit), and corpus
    BLEU-4."""
    import sacrebleu
    L = max(pred.shape[1], target.shape[1])
    pred = nn.functional.pad(pred, (0, L - pred.shape[1]), value=seq.PAD)
    target = nn.functional.pad(target, (0, L - target.shape[1]), value=seq.PAD)
    real = target != seq.PAD
    words = real & (target != seq.EOS)
    bleu = sacrebleu.corpus_bleu([vocab.decode(p) for p in pred], [[vocab.decode(t) for t in target]])
    return {"exact": float((pred == target).all(1).float().mean()),
            "token_acc": float(((pred == target) & real).sum() / real.sum()),
            "word_acc": float(((pred == target) & words).sum() / words.sum().clamp(min=1)), "bleu": float(bleu.score)}


@register_objective
class Caption(Objective):
    name = "caption"
    score = "val_exact"

    def __init__(self, cfg, device, log, init=None):
        super().__init__(cfg, device, log, init)
        self.model_name = cfg.model
        entry = get_entry(cfg.model)
        base = {**(init.overrides if init and init.model_name == cfg.model else {}), **cfg.model_overrides}
        mcfg = model_config(cfg.model, **base)
        mean, std = entry.mean, entry.std
        if cfg.data == "digit-strips":
            digits = build_dataset("mnist")
            train_digits, val_digits = split(digits, cfg.val_fraction, cfg.seed)
            self.train_set = strips.DigitStrips(train_digits, cfg.train_size or STRIPS, cfg.seed, TRAIN_KEY, mean, std,
                                               fresh=True)
            self.val_set = strips.DigitStrips(val_digits, VAL_STRIPS, cfg.seed, VAL_KEY, mean, std)
            self.vocab, tgt_len, img_size, in_chans = self.train_set.vocab, self.train_set.tgt_len, strips.STRIP, 1
        else:
            root = Path(cfg.data)
            items = strips.read_captions(root / "captions.txt", root)
            random.Random(cfg.seed).shuffle(items)
            n_val = max(1, round(cfg.val_fraction * len(items)))
            train, val = items[n_val:], items[:n_val]
            if cfg.train_size:
                train = train[:cfg.train_size]
            self.vocab = seq.Vocabulary.from_texts([c for _, c in train])
            tgt_len = max(len(c.split()) for _, c in items) + 2
            img_size, in_chans = tuple(mcfg.img_size), mcfg.in_chans
            if len(mean) != in_chans:  # the entry's statistics are for another channel count
                mean, std = (0.5,) * in_chans, (0.5,) * in_chans
            make = lambda part: strips.CaptionedFolder(root, None, self.vocab, img_size, in_chans, tgt_len,  # noqa
                                                       mean, std, items=part)
            self.train_set, self.val_set = make(train), make(val)
        self.tgt_len = tgt_len
        self.model_overrides = {**base, "vocab": len(self.vocab), "img_size": tuple(img_size), "in_chans": in_chans,
                                "max_len": max(mcfg.max_len, tgt_len)}
        self.record = {"task": cfg.data if cfg.data == "digit-strips" else "folder", "vocab": self.vocab.tokens,
                       "img_size": list(img_size), "in_chans": in_chans, "mean": list(mean), "std": list(std),
                       "tgt_len": tgt_len}

    @classmethod
    def read_init(cls, cfg):
        """A captioning run's checkpoint continues as it is; any other checkpoint is read as the image encoder (a
        vitkit checkpoint as its own model, pretraining runs as their backbone; other files as --opt encoder=...)."""
        from ..weights import load_checkpoint
        from ..weights.checkpoint import is_vitkit_checkpoint
        from ..weights.pretrained import read_any
        if is_vitkit_checkpoint(cfg.init):
            if _is_captioner(load_checkpoint(cfg.init).model_name):
                return read_any(cfg.init, cfg.model)
            return cls.adapt_init(read_any(cfg.init))
        from .config import default_model
        encoder = model_config(cfg.model or default_model(cfg.data, cls.name), **cfg.model_overrides).encoder
        return cls.adapt_init(read_any(cfg.init, encoder))

    @classmethod
    def model_of(cls, init):
        return init.model_name if _is_captioner(init.model_name) else None

    def describe(self) -> str:
        H, W = self.record["img_size"]
        return (f"{len(self.train_set)} train / {len(self.val_set)} val captioned images ({self.cfg.data}), "
                f"{H}×{W} pixels, vocabulary {len(self.vocab)}")

    def build_model(self) -> nn.Module:
        model = create_model(self.model_name, **self.model_overrides)
        if self.init is None:
            return model.train()
        if _is_captioner(self.init.model_name):
            model.load_state_dict(self.init.state)
        else:  # weights for the image encoder alone, fitted to the caption images' size
            from ..weights.io import CheckpointError
            from ..weights.pretrained import fit_pretrained
            enc, notes = fit_pretrained(self.init, img_size=tuple(self.record["img_size"]),
                                        in_chans=self.record["in_chans"])
            theirs, wanted = enc.state_dict(), model.encoder.state_dict().keys()  # the encoder has no head
            missing = sorted(set(wanted) - set(theirs))
            if missing:
                raise CheckpointError(f"--init {self.init.source_path} ({self.init.model_name}) lacks the encoder's "
                                      f"{', '.join(missing[:6])}; pass a checkpoint of {model.cfg.encoder}, or set "
                                      f"--opt encoder=NAME to the model it holds")
            model.encoder.load_state_dict({k: theirs[k] for k in wanted})
            for note in notes:
                self.log(f"  {note}")
        self.log(f"initialised from {self.init.source_path} ({self.init.source}, {self.init.model_name})")
        return model.train()

    def loss(self, model, batch, gen):
        images, tgt = batch
        logits = model(images, tgt[:, :-1])
        loss = smoothed_cross_entropy(logits, tgt[:, 1:], self.cfg.label_smoothing, seq.PAD)
        penalty = getattr(getattr(model, "module", model), "penalty", None)
        if penalty is not None:
            return loss + penalty, {"attention_penalty": float(penalty.detach())}
        return loss, {}

    def _decode(self, model, images: Tensor, beam: int) -> Tensor:
        n = self.tgt_len - 1
        return greedy(model, images, n) if beam == 1 else beam_search(model, images, n, beam=beam)

    @torch.no_grad()
    def evaluate(self, model, loader, procs):
        raw = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        preds, targets = [], []
        for images, tgt in loader:
            preds.append(self._decode(raw, images.to(self.device), 1).cpu())
            targets.append(tgt[:, 1:])
        model.train(was_training)
        pred = torch.cat([nn.functional.pad(p, (0, self.tgt_len - 1 - p.shape[1]), value=seq.PAD) for p in preds])
        m = caption_metrics(pred, torch.cat(targets), self.vocab)
        n = torch.tensor([m["exact"] * len(pred), m["token_acc"], m["word_acc"], m["bleu"], len(pred), 1.0],
                         dtype=torch.float64)
        procs.all_reduce(n)  # exact counts add; token accuracy and BLEU are averaged over processes
        return {"val_exact": float(n[0] / n[4]), "val_token_acc": float(n[1] / n[5]), "val_word_acc": float(n[2] / n[5]),
                "val_bleu": float(n[3] / n[5])}

    def finish(self, model, run_dir: Path) -> None:
        raw = getattr(model, "module", model)
        was_training = raw.training
        raw.eval()
        result: dict = {"model": self.model_name}
        loader = DataLoader(self.val_set, batch_size=128)
        with torch.no_grad():
            for label, beam in (("greedy", 1), (f"beam{BEAM}", BEAM)):
                pred = torch.cat([nn.functional.pad(self._decode(raw, x.to(self.device), beam).cpu(),
                                                    (0, self.tgt_len - 1), value=seq.PAD)[:, :self.tgt_len - 1]
                                  for x, _ in loader])
                target = torch.cat([t[:, 1:] for _, t in loader])
                result[label] = caption_metrics(pred, target, self.vocab)
        if isinstance(self.val_set, strips.DigitStrips) and hasattr(raw, "align"):
            result["attention"] = attention_on_digits(raw, self.val_set, self.device)
            attention_figure(raw, self.val_set, run_dir / "attention.png", self.device)
        raw.train(was_training)
        (run_dir / "captions.json").write_text(json.dumps(result, indent=2) + "\n")
        g, b = result["greedy"], result[f"beam{BEAM}"]
        self.log(f"held-out captions: greedy exact {g['exact']:.4f} / per word {g['word_acc']:.4f} / BLEU-4 "
                 f"{g['bleu']:.1f}; beam {BEAM}: {b['exact']:.4f} / {b['word_acc']:.4f} / {b['bleu']:.1f}")
        if "attention" in result:
            self.log(f"attention: the largest cross-attention weight lies on the digit being written for "
                     f"{result['attention']['argmax_in_span']:.3f} of the held-out digits")


def _is_captioner(name: str) -> bool:
    return get_entry(name).inputs == "image+tokens"


@torch.no_grad()
def attention_on_digits(model: nn.Module, ds: strips.DigitStrips, device, most: int = 1000) -> dict[str, float]:
    """For each digit t of a held-out strip (teacher forcing with its true caption), whether the memory position
    with the largest attention weight for token t lies inside digit t's span; and the mean weight inside it."""
    x_of = model.token_x()  # (N,) pixels; NaN for non-places
    place = ~torch.isnan(x_of)
    hits = mass = count = 0.0
    n = min(most, len(ds))
    for start in range(0, n, 128):
        idx = list(range(start, min(n, start + 128)))
        items = [ds[i] for i in idx]  # each strip composed once
        images = torch.stack([image for image, _ in items]).to(device)
        tgt = torch.stack([caption for _, caption in items]).to(device)
        weights = model.align(images, tgt[:, :-1]).float().cpu()  # (B, T, N): row t predicts token t + 1
        for b, i in enumerate(idx):
            for t, (x0, x1) in enumerate(ds.spans(i)):
                w = weights[b, t].masked_fill(~place, float("-inf"))
                inside = place & (x_of >= x0) & (x_of < x1)
                hits += float(inside[int(w.argmax())])
                mass += float(weights[b, t][inside].sum())
                count += 1
    return {"argmax_in_span": hits / count, "mass_in_span": mass / count, "digits": int(count)}


@torch.no_grad()
def attention_figure(model: nn.Module, ds: strips.DigitStrips, path: Path, device, count: int = 4) -> Path:
    """Rows of held-out strips; for each, the strip and, per generated digit, its cross-attention over the memory
    positions drawn on the strip (greedy captions)."""
    from ..explain.plots import _figure
    prefix, gh, gw = model.place_grid()  # the memory: `prefix` non-places, then a gh×gw grid of places
    fig = _figure((2.2 * (strips.MAX_DIGITS + 1), 0.9 * count + 0.4))
    axes = fig.subplots(count, strips.MAX_DIGITS + 1, squeeze=False)
    for r in range(count):
        image, _ = ds[r]
        caption = greedy(model, image[None].to(device), strips.MAX_DIGITS + 1)[0].cpu()
        tokens = [int(c) for c in caption if int(c) > seq.EOS]
        tgt = torch.tensor([[seq.BOS, *tokens]], device=device)
        weights = model.align(image[None].to(device), tgt).float().cpu()[0]  # (T, N)
        axes[r][0].imshow(image[0], cmap="gray")
        axes[r][0].set_title(" ".join(ds.vocab.tokens[t] for t in tokens), fontsize=8)
        for c in range(strips.MAX_DIGITS):
            ax = axes[r][c + 1]
            ax.axis("off")
            if c < len(tokens):
                maps = weights[c][prefix:].reshape(gh, gw)
                ax.imshow(image[0], cmap="gray")
                ax.imshow(maps, cmap="inferno", alpha=0.6, extent=(0, strips.STRIP[1], strips.STRIP[0], 0))
                ax.set_title(f"writing '{ds.vocab.tokens[tokens[c]]}'", fontsize=8)
        axes[r][0].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
