"""``decalign import-official``: turn official DecAlign weights and config into a run directory."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-official", help="convert an official DecAlign state_dict (.pth) into a run directory",
        description="Convert weights saved by the official taco-group/DecAlign code (torch.save of the "
                    "state_dict) and the config they were trained with into a run directory of this "
                    "project (card.json, best.safetensors, last.safetensors). The .pth file is read with "
                    "torch.load(weights_only=True): no code in it runs. A use_bert model's BERT "
                    "(text_model.*) is rebuilt from its tensors' shapes; nothing is downloaded.")
    parser.add_argument("--state-dict", required=True, metavar="PTH", help="official state_dict file")
    parser.add_argument("--config", required=True, metavar="JSON", help="official config, e.g. dec_mosi_config.json")
    parser.add_argument("--feature-dims", required=True, metavar="L,A,V",
                        help="input widths of text, audio and vision, e.g. 768,5,20 for MOSI (with a BERT, "
                             "the text width is the BERT's width)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..official import import_official

    card = import_official(args.state_dict, args.config, parse_dims(args.feature_dims), args.out)
    widths = ", ".join(f"{m} {w}" for m, w in card.widths.items())
    bert = card.config.model
    text = (f"; BERT {bert.bert_num_layers} layers, width {bert.bert_hidden_size}, vocabulary {bert.bert_vocab_size}"
            if bert.use_bert else "")
    print(f"imported {card.task} model ({widths}; d={card.config.model.d_model}{text}) into {args.out}")
    return 0


def parse_dims(text: str) -> list[int]:
    try:
        dims = [int(part) for part in text.replace(" ", "").split(",")]
    except ValueError as exc:
        raise ValueError(f"--feature-dims: expected three integers like 768,5,20, found {text!r}") from exc
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"--feature-dims: expected three positive integers like 768,5,20, found {text!r}")
    return dims
