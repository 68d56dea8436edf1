"""AppTest of the Sample page with an imported official BERT model: token positions and text attributions."""

from __future__ import annotations

import json
import warnings

import torch

from decalign.data import make_synthetic, write_mmsa_pickle
from decalign.data.tokens import token_positions
from decalign.official import import_official
from tests.reference.official_model import OfficialDecAlign, official_config_dict

BERT = {"vocab_size": 40, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
        "intermediate_size": 64, "max_position_embeddings": 16, "type_vocab_size": 2}


def bert_run(folder):
    raw = official_config_dict(dst_feature_dim_nheads=[16, 4], nlevels=1, pde_dim=16, num_prototypes=3)
    torch.manual_seed(0)
    reference = OfficialDecAlign(raw, feature_dims=(64, 5, 7), output_dim=1, bert_config=BERT)
    (folder / "cfg.json").write_text(json.dumps(raw))
    torch.save(reference.state_dict(), folder / "model.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_official(folder / "model.pth", folder / "cfg.json", [64, 5, 7], folder / "run")
    data = make_synthetic(12, 6, 6, widths={"text": 8, "audio": 5, "vision": 7}, seq_len=8, text_bert_vocab=40)
    write_mmsa_pickle(data, folder / "run" / "data.pkl")
    card_path = folder / "run" / "card.json"
    card = json.loads(card_path.read_text())
    card["data_source"] = "data.pkl"  # the data shipped in the run folder
    card_path.write_text(json.dumps(card))
    return folder / "run", data


def test_sample_page_shows_bert_tokens_and_attributes_the_text(page_test, tmp_path, monkeypatch):
    run, data = bert_run(tmp_path)
    monkeypatch.setenv("DECALIGN_DEMO_MODEL", str(run))
    at = page_test("sample").run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [t for t in at.dataframe if "token id" in t.value.columns]
    assert len(tables) == 1
    row = [str(i) for i in data.splits["test"].ids].index(at.selectbox(key="sample_id").value)
    tokens = data.splits["test"].text_bert[row].T  # (T, 3)
    expected = token_positions(tokens)
    assert tables[0].value.reset_index(drop=True).equals(expected)  # masked positions left out, ids as ids
    assert len(expected) < tokens.shape[0] or tokens[:, 1].all()
    captions = " ".join(c.value for c in at.caption)
    assert "BERT tokens" in captions and "attributions add up" in captions
