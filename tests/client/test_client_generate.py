"""generate() with the exported key/value cache equals the PyTorch subnet's greedy decoding."""

from __future__ import annotations

import pytest
import torch
from helpers.store import WORDS
from tokenizers import Tokenizer, models, pre_tokenizers

from client_sdk import ModelError, ModelHandle
from slicer.nn.factory import build_model
from slicer.onnx import export
from slicer.spec.subnet_config import SubnetConfig


def torch_greedy(model, ids: list[int], steps: int, eos: set[int] = frozenset()) -> list[int]:
    """Greedy decoding by recomputing the whole sequence each step (no cache): the reference."""
    seq, out = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(seq).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory, decoder_dims):
    folder = tmp_path_factory.mktemp("dec")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = SubnetConfig.parse({"layers": 3, "heads": [6, 3, 6], "ffn": 48}, decoder_dims)
    model = build_model(decoder_dims, cfg).eval()
    for p in model.parameters():  # large weights: a wrong cache would change the greedy path
        p.data.mul_(3.0)
    ids = torch.randint(1, decoder_dims.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    manifest = export.build_artifact(model, folder / "artifact", [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}],
                                     tokenizer=folder)
    return model, ModelHandle(folder / "artifact", manifest, "0" * 64, threads=1), tok


def test_greedy_generate_equals_pytorch_and_sampling_is_seeded(tiny_decoder):
    model, handle, tok = tiny_decoder
    prompt = "w1 w7 w30 w2"
    ids = tok.encode(prompt, add_special_tokens=False).ids
    got = handle.generate(prompt, max_new_tokens=8)
    assert got.token_ids == torch_greedy(model, ids, 8) and got.finish_reason == "length"
    assert len(set(got.token_ids)) > 1
    assert handle.generate(prompt, max_new_tokens=8, temperature=0.7, top_k=1).token_ids == got.token_ids
    a = handle.generate(prompt, max_new_tokens=8, temperature=1.0, seed=3)
    assert a == handle.generate(prompt, max_new_tokens=8, temperature=1.0, seed=3)
    # a stop string ends the text before it
    stop = tok.decode(got.token_ids[2:3])
    cut = handle.generate(prompt, max_new_tokens=8, stop=[stop])
    assert cut.finish_reason == "stop" and stop not in cut.text
    with pytest.raises(ModelError, match="is a decoder"):
        handle.predict(["w1"])
    with pytest.raises(ModelError, match="positions"):
        handle.generate(prompt, max_new_tokens=100)


@pytest.mark.slow
def test_generate_on_a_smollm2_slice_equals_the_pytorch_subnets_greedy_output(prepared_teacher, tmp_path):
    from slicer.formats.storage import fingerprint, load_base
    from slicer.nn.supernet import Supernet
    from slicer.slicing import OpenSupernet, export_to_folder

    folder = prepared_teacher("smollm2")
    net = Supernet(load_base(folder))
    opened = OpenSupernet(net, folder, fingerprint(folder), None, reordered=False)
    cfg = SubnetConfig.parse({"layers": 6, "heads": 6, "ffn": 512}, net.dims)
    manifest = export_to_folder(opened, cfg, tmp_path / "artifact")
    assert manifest["device"]["tokenizer"]["eos_token_id"] == 2 and manifest["device"]["labels"] is None
    handle = ModelHandle(tmp_path / "artifact", manifest, "0" * 64, threads=2)
    prompt = "def fibonacci(n):\n    "
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
    got = handle.generate(prompt, max_new_tokens=12)
    assert got.token_ids == torch_greedy(net.extract(cfg).eval(), ids, 12, eos={2})
    assert got.token_ids
