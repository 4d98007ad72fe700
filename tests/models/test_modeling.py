"""Models and tokenizers (qalign_lib.models.modeling): the pad token LLaMA lacks."""
import torch

from qalign_lib.models import modeling


def test_pad_token_added_with_mean_embedding(tiny_model):
    tok, model = modeling.load_tokenizer(tiny_model), modeling.load_model(tiny_model)
    assert tok.pad_token is None and tok.eos_token == "</s>"
    before = model.get_input_embeddings().weight.detach().clone()
    assert modeling.ensure_pad_token(tok, model)
    emb = model.get_input_embeddings().weight
    assert tok.pad_token == modeling.PAD_TOKEN == "<pad>" and tok.pad_token_id != tok.eos_token_id and emb.shape[0] == before.shape[0] + 1
    assert torch.allclose(emb[-1], before.mean(0), atol=1e-6)
    assert torch.allclose(model.get_output_embeddings().weight[-1], model.get_output_embeddings().weight[:-1].mean(0), atol=1e-6)
    assert not modeling.ensure_pad_token(tok, model)  # a second call changes nothing
