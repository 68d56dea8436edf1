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
    parser.add_argument("--data", metavar="FILE",
                        help="the data the weights were trained on (MMSA pickle or npz): adds metrics per split, "
                             "the linear baseline, training prototypes and the held-out reference that flags "
                             "and drift need")
    parser.add_argument("--metric-convention", default="auto", choices=("auto", "mosi", "sims"),
                        help="regression metrics: MOSI/MOSEI or CH-SIMS (default auto: sims when the config or "
                             "data file is named after it or the labels span [-1, 1])")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import OFFICIAL_MODALITIES
    from ..data import check_compatible
    from ..official import import_official, load_official_state_dict
    from ..train.finalize import finish_import
    from .common import check_task, load_data

    dims = parse_dims(args.feature_dims)
    dataset = None
    if args.data:  # checked before anything is written
        dataset = load_data(args.data)
        official = load_official_state_dict(args.state_dict)
        bert = any(key.startswith("text_model.") for key in official)
        check_compatible(dataset, dict(zip(OFFICIAL_MODALITIES.values(), dims)), args.data, bert_text=bert)
        head = official.get("out_layer.weight")
        if head is not None:
            outputs = int(head.shape[0])
            check_task(dataset, "regression" if outputs == 1 else "classification", outputs, args.data)
    card = import_official(args.state_dict, args.config, dims, args.out)
    convention = decide_convention(args, card.task, dataset)
    card = finish_import(Path(args.out), convention, dataset, data_source=args.data)
    widths = ", ".join(f"{m} {w}" for m, w in card.widths.items())
    bert = card.config.model
    text = (f"; BERT {bert.bert_num_layers} layers, width {bert.bert_hidden_size}, vocabulary {bert.bert_vocab_size}"
            if bert.use_bert else "")
    print(f"imported {card.task} model ({widths}; d={card.config.model.d_model}{text}; metric convention "
          f"{convention}) into {args.out}")
    if card.baseline is not None:
        from ..train.baseline import card_comparison

        comparison = card_comparison(card)
        print(comparison["sentence"] if comparison else "")
    return 0


def decide_convention(args: argparse.Namespace, task: str, dataset) -> str:
    """The one rule (``metric_convention``) on the config's and data's names and the training labels' range,
    unless --metric-convention names one."""
    from pathlib import Path

    from ..train.metrics import metric_convention

    if args.metric_convention != "auto":
        if task == "classification":
            raise ValueError(f"--metric-convention {args.metric_convention}: the weights are a classifier "
                             "(their head has more than one output); leave it at auto")
        return args.metric_convention
    labels = None if dataset is None else dataset.splits["train"].labels
    span = None if labels is None or not len(labels) else (labels.min(), labels.max())
    names = " ".join(Path(p).name for p in (args.config, args.data) if p)
    return metric_convention(names, span, task)


def parse_dims(text: str) -> list[int]:
    try:
        dims = [int(part) for part in text.replace(" ", "").split(",")]
    except ValueError as exc:
        raise ValueError(f"--feature-dims: expected three integers like 768,5,20, found {text!r}") from exc
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"--feature-dims: expected three positive integers like 768,5,20, found {text!r}")
    return dims
