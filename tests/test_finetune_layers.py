"""finetune.layers' kept outputs: a step from them is the step the whole model takes.

A small random Llama (the mechanism, not what is learned; tests/test_finetune.py trains the
real model with --layers and serves the adapter)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")


def loop_and_sequences(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.examples import IGNORE, Sequence
    from finetune.loop import Loop

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=[2, 3], init_lora_weights=False, task_type="CAUSAL_LM"))  # B not zero: every grad counts
    sequences = []
    for n, length in enumerate((9, 17, 12, 5, 21)):
        ids = torch.randint(0, 97, (length,), generator=torch.Generator().manual_seed(n)).tolist()
        labels = [IGNORE] * (length - 3) + ids[-3:]
        sequences.append(Sequence(input_ids=ids, labels=labels, line=n + 1))
    return Loop(model, "cpu", 0), sequences


def step(loop, batch):
    loop.model.zero_grad()
    loss, _ = loop.forward(batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in loop.model.named_parameters() if p.requires_grad}


def test_the_kept_outputs_give_the_whole_models_loss_and_gradients():
    whole, sequences = loop_and_sequences()
    kept, _ = loop_and_sequences()
    kept.freeze_below(2, sequences, batch_size=2)
    assert kept.frozen == 2 and len(kept.cache) == len(sequences)
    for batch in (sequences[:2], sequences[2:]):  # mixed lengths: padding
        loss_whole, grads_whole = step(whole, batch)
        loss_kept, grads_kept = step(kept, batch)
        assert loss_kept == pytest.approx(loss_whole, rel=1e-5)
        assert grads_kept.keys() == grads_whole.keys() and len(grads_kept) == 2 * 3 * 2  # A and B, 3 modules, 2 layers
        for name in grads_whole:
            torch.testing.assert_close(grads_kept[name], grads_whole[name], rtol=1e-4, atol=1e-6)
    assert [n for n, _ in kept.model.named_modules() if n.endswith("layers.3")]  # the layers are put back


def test_outputs_that_would_not_fit_are_not_kept(monkeypatch):
    loop, sequences = loop_and_sequences()
    monkeypatch.setattr(os, "sysconf", lambda name: 1)  # a machine with no memory to spare
    loop.freeze_below(2, sequences, batch_size=2)
    assert loop.frozen == 0 and not loop.cache
    assert loop.forward(sequences[:2])[0].item() > 0  # the whole model runs instead


def test_kept_outputs_that_disagree_with_the_model_are_dropped(monkeypatch, caplog):
    from finetune.loop import Loop

    loop, sequences = loop_and_sequences()
    top = Loop._top
    monkeypatch.setattr(Loop, "_top", lambda self, batch, mask: top(self, batch, mask) + 1.0)  # a model they do not fit
    loop.freeze_below(2, sequences, batch_size=2)
    assert loop.frozen == 0 and not loop.cache
    assert "running them every step" in caplog.text
