"""The data-parallel group as fairseq sees it, for analyses split across workers:
world size, rank, sums (fairseq's ``distributed_utils.all_reduce``) and a gather of
strings. With one worker (or no process group) every operation is the identity."""

from typing import Dict, List

import torch


class Workers:
    def __init__(self):
        from fairseq.distributed import utils as du

        self.du = du
        ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world = du.get_data_parallel_world_size() if ready else 1
        self.rank = du.get_data_parallel_rank() if ready else 0
        self.group = du.get_data_parallel_group() if self.world > 1 else None
        self.device = None
        if self.world > 1 and torch.cuda.is_available():
            try:
                if torch.distributed.get_backend(self.group) == "nccl":
                    self.device = torch.device("cuda", torch.cuda.current_device())
            except Exception:  # not a torch.distributed group (e.g. XLA)
                pass

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        dev = t.device
        x = t.to(self.device) if self.device is not None else t.clone()
        x = self.du.all_reduce(x, group=self.group)
        return x.to(dev)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value everywhere (keeps every worker's ranking identical)."""
        if self.world == 1:
            return t
        dev = t.device
        x = t.to(self.device) if self.device is not None else t.clone()
        self.du.broadcast(x, src=0, group=self.group)
        return x.to(dev)

    def gather_strings(self, local: Dict[int, str], n: int) -> List[str]:
        """Strings at global positions 0..n-1, each given by exactly one worker."""
        if self.world == 1:
            return [local[i] for i in range(n)]
        enc = {i: s.encode("utf-8") for i, s in local.items()}
        lengths = torch.zeros(n, dtype=torch.int64)
        for i, b in enc.items():
            lengths[i] = len(b)
        lengths = self.all_reduce(lengths)
        width = max(int(lengths.max()) if n else 0, 1)
        data = torch.zeros(n, width, dtype=torch.int32)
        for i, b in enc.items():
            if b:
                data[i, :len(b)] = torch.tensor(list(b), dtype=torch.int32)
        data = self.all_reduce(data)
        return [bytes(data[i, :int(lengths[i])].tolist()).decode("utf-8") for i in range(n)]


class SingleWorker(Workers):
    def __init__(self):  # noqa: D107  (no fairseq needed)
        self.world, self.rank, self.group, self.device = 1, 0, None, None
