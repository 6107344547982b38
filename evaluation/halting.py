"""How test rows halt, over any ACT loss head: the reference's fixed schedule (every row runs halt_max_steps) and
adaptive halting with continuous batching (docs/network.md#act-halting).

Adaptive: a row stops when sigmoid(q_halt) > threshold or at halt_max_steps; its slot then takes the next puzzle
of the stream. Only the ACT contract is used: `head(carry=, batch=, return_keys=)`, and a carry whose `halted`
rows are restarted on the matching rows of the next batch and whose `steps` count each row's steps. Both are batch
runners for evaluation.loop.evaluate; the fixed one is its default, as in training."""
import math
from collections import deque
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from models.losses import row_metrics
from utils.device import to_device

BATCH_FIELDS = ("inputs", "labels", "puzzle_identifiers")


def halt_logit_threshold(threshold: Optional[float]) -> float:
    """sigmoid(q) > t  <=>  q > log(t / (1 - t)); None (fixed halting) or t >= 1 never halts early, t <= 0 always."""
    if threshold is None or threshold >= 1:
        return math.inf
    if threshold <= 0:
        return -math.inf
    return math.log(threshold / (1 - threshold))


def run_to_max_steps(head, batches: Iterable, return_keys: Sequence[str], device: torch.device):
    """The reference evaluation: each test batch runs until all its rows halt (halt_max_steps in eval mode)."""
    for set_name, batch, _ in batches:
        batch = to_device(batch, device)
        with torch.device(device):
            carry = head.initial_carry(batch)
        while True:
            carry, _, metrics, outputs, all_halted = head(carry=carry, batch=batch, return_keys=return_keys)
            if all_halted:
                break
        yield set_name, batch, metrics, outputs


def _pad_steps(x: torch.Tensor, steps: int, value: float, dim: int = 0) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = steps - shape[dim]
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


class _RowStream:
    """The rows of a stream of (set_name, batch, _) test batches, handed out a few at a time."""

    def __init__(self, batches: Iterable, device: torch.device):
        self._batches = iter(batches)
        self._device = device
        self._pending: Deque[Tuple[str, Dict[str, torch.Tensor], int]] = deque()  # (set, batch, next row)
        self.taken = 0

    def peek_batch_size(self) -> Optional[int]:
        if not self._fill():
            return None
        return self._pending[0][1]["inputs"].shape[0]

    def _fill(self) -> bool:
        if not self._pending:
            try:
                set_name, batch, _ = next(self._batches)
            except StopIteration:
                return False
            self._pending.append((set_name, to_device(batch, self._device), 0))
        return True

    def take(self, count: int) -> Tuple[List[str], Dict[str, torch.Tensor]]:
        """Up to `count` rows: their set names and the batch fields stacked."""
        names: List[str] = []
        parts: List[Dict[str, torch.Tensor]] = []
        while len(names) < count and self._fill():
            set_name, batch, start = self._pending.popleft()
            end = min(start + count - len(names), batch["inputs"].shape[0])
            parts.append({k: v[start:end] for k, v in batch.items()})
            names += [set_name] * (end - start)
            if end < batch["inputs"].shape[0]:
                self._pending.appendleft((set_name, batch, end))
        self.taken += len(names)
        rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return names, rows


class AdaptiveHalting:
    """A batch runner for evaluation.loop.evaluate: yields (set_name, batch, metrics, outputs) chunks of halted rows.

    `threshold` None halts only at halt_max_steps (the fixed schedule, through the same loop). Outputs add `steps`
    [n] (each row's steps), `row_index` [n] (position in the stream; rows finish out of order) and, with
    `record_steps`, `step_preds` [n, most steps, seq_len] (the answer after every step, -1 after the row halted) and
    `step_q_halt_logits` [n, most steps] (NaN after the row halted)."""

    def __init__(self, threshold: Optional[float] = 0.5, record_steps: bool = False):
        self.threshold = threshold
        self.logit_threshold = halt_logit_threshold(threshold)
        self.record_steps = record_steps
        self.model_calls = 0

    def __call__(self, head, batches: Iterable, return_keys: Sequence[str], device: torch.device
                 ) -> Iterator[Tuple[str, Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]:
        stream = _RowStream(batches, device)
        slots = stream.peek_batch_size()
        if slots is None:
            return
        keys = set(return_keys) | {"preds", "q_halt_logits"}
        slot_set: List[Optional[str]] = [None] * slots          # None: idle (the stream has run dry)
        slot_index = torch.full((slots,), -1, dtype=torch.long, device=device)
        slot_steps: List[List[Tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(slots)]
        refill = torch.ones(slots, dtype=torch.bool, device=device)
        carry, batch = None, None
        finished: Dict[str, List[Dict[str, torch.Tensor]]] = {}

        while True:
            free = refill.nonzero().flatten().tolist()
            names, rows = stream.take(len(free))
            if names:
                taken = torch.tensor(free[:len(names)], device=device)
                if batch is None:  # the first batch fixes the dtypes and shapes of every field
                    batch = {k: v.new_zeros((slots,) + v.shape[1:]) for k, v in rows.items()}
                for k, v in rows.items():
                    batch[k][taken] = v
                slot_index[taken] = torch.arange(stream.taken - len(names), stream.taken, device=device)
            for i, slot in enumerate(free):
                slot_set[slot] = names[i] if i < len(names) else None
                slot_steps[slot] = []
            active_list = [s is not None for s in slot_set]
            if not any(active_list):
                break

            if carry is None:
                with torch.device(device):
                    carry = head.initial_carry(batch)  # every row halted: all take the batch
            else:
                carry.halted = refill                   # restart the freed slots on their new rows
            carry, _, _, outputs, _ = head(carry=carry, batch=batch, return_keys=keys)
            self.model_calls += 1

            active = torch.tensor(active_list, device=device)
            done = carry.halted | (outputs["q_halt_logits"].float() > self.logit_threshold)
            if self.record_steps:
                preds_cpu, q_cpu = outputs["preds"].cpu(), outputs["q_halt_logits"].float().cpu()
                for slot, is_active in enumerate(active_list):
                    if is_active:
                        slot_steps[slot].append((preds_cpu[slot], q_cpu[slot]))
            ended = (done & active).nonzero().flatten()
            if len(ended):
                self._collect(finished, ended, slot_set, carry, batch, outputs, slot_index, slot_steps, keys)
            refill = done | ~active

            for set_name in list(finished):
                if sum(len(c["steps"]) for c in finished[set_name]) >= slots:
                    yield self._emit(set_name, finished.pop(set_name))
        for set_name in list(finished):
            yield self._emit(set_name, finished.pop(set_name))

    def _collect(self, finished, ended, slot_set, carry, batch, outputs, slot_index, slot_steps, keys):
        ended_list = ended.tolist()
        by_set: Dict[str, List[int]] = {}
        for position, slot in enumerate(ended_list):
            by_set.setdefault(slot_set[slot], []).append(position)
        chunk = {k: v[ended] for k, v in batch.items()}
        chunk.update({k: v[ended] for k, v in outputs.items() if k in keys})
        chunk["steps"] = carry.steps[ended]
        chunk["row_index"] = slot_index[ended]
        if self.record_steps:
            most = max(len(slot_steps[slot]) for slot in ended_list)
            chunk["step_preds"] = torch.stack([_pad_steps(torch.stack([p for p, _ in slot_steps[slot]]), most, -1)
                                               for slot in ended_list])
            chunk["step_q_halt_logits"] = torch.stack([_pad_steps(torch.stack([q for _, q in slot_steps[slot]]), most, math.nan)
                                                       for slot in ended_list])
        for set_name, positions in by_set.items():
            index = torch.tensor(positions, device=ended.device)
            finished.setdefault(set_name, []).append(
                {k: v[index.to(v.device)] for k, v in chunk.items()})

    @staticmethod
    def _emit(set_name: str, chunks: List[Dict[str, torch.Tensor]]):
        if "step_preds" in chunks[0]:  # pad the per-step records to the longest row of the chunk
            most = max(c["step_preds"].shape[1] for c in chunks)
            for c in chunks:
                c["step_preds"] = _pad_steps(c["step_preds"], most, -1, dim=1)
                c["step_q_halt_logits"] = _pad_steps(c["step_q_halt_logits"], most, math.nan, dim=1)
        merged = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        batch = {k: merged.pop(k) for k in BATCH_FIELDS if k in merged}
        metrics, _ = row_metrics(merged["preds"], batch["labels"], merged["q_halt_logits"], merged["steps"],
                                 halted=torch.ones_like(merged["steps"], dtype=torch.bool))
        return set_name, batch, metrics, merged


def run_rows(head, rows: Dict[str, torch.Tensor], threshold: Optional[float], device: torch.device,
             record_steps: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Every row of one batch through adaptive halting (fixed when `threshold` is None), back in the given order:
    (the batch fields, the outputs with `steps` and, with `record_steps`, the answer after every step)."""
    runner = AdaptiveHalting(threshold, record_steps=record_steps)
    chunks = list(runner(head, [("all", rows, len(rows["inputs"]))], (), device))
    merged_batch, merged = ({k: torch.cat([c[i][k] for c in chunks]) for k in chunks[0][i]} for i in (1, 3))
    if record_steps:  # chunks were padded to their own longest row
        most = max(c[3]["step_preds"].shape[1] for c in chunks)
        merged["step_preds"] = torch.cat([_pad_steps(c[3]["step_preds"], most, -1, dim=1) for c in chunks])
        merged["step_q_halt_logits"] = torch.cat([_pad_steps(c[3]["step_q_halt_logits"], most, math.nan, dim=1)
                                                  for c in chunks])
    order = torch.argsort(merged["row_index"].cpu())
    return ({k: v[order.to(v.device)] for k, v in merged_batch.items()},
            {k: v[order.to(v.device)] for k, v in merged.items()})
