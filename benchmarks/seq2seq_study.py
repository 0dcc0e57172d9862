"""The lectures' encoder–decoder claims, measured: each part is an ordinary `vitkit train` run under --runs-dir.

    python benchmarks/seq2seq_study.py [--parts copy reverse caption caption-vit sat] [--threads 2]
        [--caption-epochs 20] [--strips 8000] [--encoder-epochs 30]

copy      transformer_small on the Annotated Transformer's copy task: exact match of greedy decoding on the 1,000
          fresh validation sequences (lengths 1–10 over 8 symbols), Noam schedule
reverse   rnn_bahdanau (GRU encoder–decoder, additive attention) on the reversal task: exact match, and the share
          of attention each output token puts on the mirrored source position (alignment.json)
caption   caption_resnet_pico (a small ResNet's feature map → the Transformer's decoder) on the digit strips (1–4
          MNIST digits; held-out strips from held-out digits): exact match and per-token accuracy, greedy and beam
          search, BLEU-4, and how often the largest cross-attention weight for digit t lies inside digit t's span
          (captions.json). With --encoder-epochs N (default 30) its encoder starts (--init) from resnet_pico_28
          trained N epochs on the MNIST training split (the same seed, so the held-out digits stay unseen)
caption-vit  the same with caption_vit_pico_patch4 (a ViT encoder, from vit_pico_patch4_28)
sat       caption_show_attend_tell on the same strips, the same figures; its CNN is the same resnet_pico_28 (from
          the same pretrained digit reader with --encoder-epochs; from scratch with 0)

Prints one line per part with its wall time; the figures also stay in each run folder.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vitkit.registry import model_config
from vitkit.train import TrainConfig, train

from finetune_study import cpu_name

# part → (model, its options): the ViT captioner keeps its own encoder; Show-Attend-Tell takes the same small
# ResNet as caption_resnet_pico, so that both read the strip with the same pretrained CNN
CAPTIONERS = {"caption": ("caption_resnet_pico", {}), "caption-vit": ("caption_vit_pico_patch4", {}),
              "sat": ("caption_show_attend_tell", {"encoder": "resnet_pico_28"})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["copy", "reverse", "caption", "sat"],
                   choices=["copy", "reverse", "caption", "caption-vit", "sat"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq-epochs", type=int, default=8)
    p.add_argument("--caption-epochs", type=int, default=20)
    p.add_argument("--strips", type=int, default=8000, help="training strips for the captioners (default 8,000)")
    p.add_argument("--encoder-epochs", type=int, default=30, help="pretrain the captioner's encoder on MNIST "
                                                                  "classification for this many epochs (0: scratch)")
    p.add_argument("--runs-dir", default="runs/seq2seq-study")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(runs_dir=args.runs_dir, threads=args.threads, progress=False)
    quiet = lambda *_: None  # noqa: E731
    print(f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}")
    for part in args.parts:
        start = time.perf_counter()
        if part in ("copy", "reverse"):
            model = "transformer_small" if part == "copy" else "rnn_bahdanau"
            run = train(TrainConfig(**common, objective="seq2seq", model=model, data=part, epochs=args.seq_epochs,
                                    schedule="noam" if part == "copy" else "cosine", warmup_epochs=1,
                                    lr=1e-3 if part == "copy" else 2e-3, name=part), overwrite=True, log=quiet)
            align = json.loads((run.run_dir / "alignment.json").read_text())
            minutes = (time.perf_counter() - start) / 60
            print(f"{part:<8} {model:<24} exact {run.best_score:.4f} (best of {args.seq_epochs} epochs); attention "
                  f"on the source position copied: mean {align['mass_on_source_position']:.3f}, largest weight "
                  f"there {align['argmax_on_source_position']:.3f}  [{minutes:.1f} min]", flush=True)
        else:
            model, options = CAPTIONERS[part]
            init = None
            encoder = model_config(model, **options).encoder
            if encoder and args.encoder_epochs:
                enc = train(TrainConfig(**common, data="mnist", model=encoder, epochs=args.encoder_epochs,
                                        name=f"encoder-{encoder}"), overwrite=True, log=quiet)
                init = str(enc.run_dir / "best.safetensors")
                print(f"encoder  {encoder} on MNIST digits, {args.encoder_epochs} epochs: held-out "
                      f"val_acc {enc.best_score:.4f}", flush=True)
            run = train(TrainConfig(**common, objective="caption", model=model, data="digit-strips", init=init,
                                    epochs=args.caption_epochs, train_size=args.strips, warmup_epochs=1,
                                    lr=1e-3 if init else None, name=part, model_overrides=options),
                        overwrite=True, log=quiet)
            res = json.loads((run.run_dir / "captions.json").read_text())
            g, b = res["greedy"], res["beam4"]
            minutes = (time.perf_counter() - start) / 60
            where = res.get("attention", {})
            print(f"{part:<11} {model:<24} greedy exact {g['exact']:.4f} digit {g['word_acc']:.4f} token "
                  f"{g['token_acc']:.4f} BLEU {g['bleu']:.1f} | beam 4 exact {b['exact']:.4f} digit {b['word_acc']:.4f} "
                  f"token {b['token_acc']:.4f} BLEU {b['bleu']:.1f} | argmax of "
                  f"the attention on the digit written {where.get('argmax_in_span', float('nan')):.3f} (mass "
                  f"{where.get('mass_in_span', float('nan')):.3f})  [{minutes:.1f} min]", flush=True)


if __name__ == "__main__":
    main()
