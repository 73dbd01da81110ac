"""The training loop's forward passes (finetune/train.py drives them).

The vocabulary projection runs only where a label is, and with finetune.layers the frozen
layers' output can be kept so that a step runs only the adapted ones.
"""

from __future__ import annotations

import logging
import math

from finetune.examples import IGNORE, Sequence

log = logging.getLogger("ragtune.finetune")


class Loop:
    """Forward passes that project to the vocabulary only where a label is.

    With finetune.layers, the layers below the adapted ones are frozen: freeze_below runs them
    once per sequence and keeps their output, and a step then runs the top layers from it.
    That is exact (no adapter, so no dropout, below), checked on one batch against the whole
    model before it is used; where the outputs would not fit in a quarter of the memory, or
    the check fails, every step runs the whole model (backward still stops at the frozen layers).
    """

    def __init__(self, model, device: str, pad_id: int):
        self.model = model
        self.device = device
        self.pad_id = pad_id
        causal_lm = model.get_base_model()
        self.body, self.head = causal_lm.model, causal_lm.lm_head
        self.frozen = 0
        self.cache: dict[int, object] = {}  # id(sequence) -> the frozen layers' output, (length, hidden)

    def freeze_below(self, frozen: int, sequences: list[Sequence], batch_size: int) -> None:
        import os

        import torch

        element = next(self.body.parameters()).element_size()
        need = sum(len(s.input_ids) for s in sequences) * self.body.config.hidden_size * element
        try:
            budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        except (ValueError, OSError):
            budget = 0
        if self.device != "cpu" or need > budget:
            why = f"on {self.device}" if self.device != "cpu" else f"their outputs would need {need >> 20} MiB"
            log.info("finetune.layers: the frozen layers run every step (%s)", why)
            return
        was_training = self.model.training
        self.model.eval()
        by_length = sorted(sequences, key=lambda s: len(s.input_ids))  # little padding
        with torch.inference_mode():
            for start in range(0, len(by_length), batch_size):
                batch = by_length[start : start + batch_size]
                ids, _, mask = self._tensors(batch)
                states = self.body(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[frozen]
                for row, s in enumerate(batch):
                    self.cache[id(s)] = states[row, : len(s.input_ids)].clone()
            probe = sequences[:batch_size]
            whole = self.forward(probe)[0].item()
            self.frozen = frozen
            cached = self.forward(probe)[0].item()
        self.model.train(was_training)
        if not math.isclose(whole, cached, rel_tol=1e-3, abs_tol=1e-4):
            log.warning("finetune.layers: the frozen layers' kept output gives loss %.5f where the model gives %.5f; "
                        "running them every step", cached, whole)
            self.frozen, self.cache = 0, {}

    def _tensors(self, batch: list[Sequence]):
        import torch

        width = max(len(s.input_ids) for s in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, s in enumerate(batch):
            ids[row, : len(s.input_ids)] = torch.tensor(s.input_ids)
            labels[row, : len(s.labels)] = torch.tensor(s.labels)
            mask[row, : len(s.input_ids)] = 1
        return ids.to(self.device), labels.to(self.device), mask.to(self.device)

    def forward(self, batch: list[Sequence]):
        """(sum of the answer tokens' losses, real tokens processed)."""
        import torch

        ids, labels, mask = self._tensors(batch)
        if self.frozen:
            hidden = self._top(batch, mask)
        else:
            hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        targets = labels[:, 1:]
        where = targets != IGNORE  # position t predicts token t+1
        logits = self.head(hidden[:, :-1][where]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[where], reduction="sum")
        return loss, int(mask.sum())

    def _top(self, batch: list[Sequence], mask):
        """The top layers (and the final norm), from the frozen layers' kept output."""
        import torch

        width = mask.shape[1]
        states = torch.zeros((len(batch), width, self.body.config.hidden_size), dtype=self.head.weight.dtype)
        for row, s in enumerate(batch):
            states[row, : len(s.input_ids)] = self.cache[id(s)]
        layers = self.body.layers
        self.body.layers = layers[self.frozen :]
        try:
            return self.body(inputs_embeds=states.to(self.device), attention_mask=mask).last_hidden_state
        finally:
            self.body.layers = layers

    def loss(self, sequences: list[Sequence], batch_size: int) -> float:
        import torch

        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start : start + batch_size]
                loss, _ = self.forward(batch)
                total += loss.item()
                count += sum(s.target_tokens for s in batch)
        self.model.train(was_training)
        return total / max(count, 1)
