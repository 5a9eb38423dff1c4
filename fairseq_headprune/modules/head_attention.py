"""fairseq's MultiheadAttention with per-head masks, importance gates and removal.

The paper's head mask ξ_h multiplies head h's context vector before ``out_proj``
(MHA(x) = Σ_h ξ_h · Att_h(x); the shared ``out_proj.bias`` stays). Here:

* ``head_mask`` (one float per *original* head, 1 = on) is that ξ. With no mask, no
  gate and no head removed, ``forward`` is fairseq's own, fast path included, so an
  untouched model computes exactly what stock fairseq computes. A 0/1 mask (no gate,
  no head removed) costs nothing either: ξ_h = 0 is a zero in ``out_proj``'s input
  columns of head h, so ``forward`` runs fairseq's own code with those columns zeroed
  in a copy of the weight (``out_proj`` itself, and so checkpoints, keep the
  originals; the copy is cached while the weight and mask do not change).
* ``row_mask`` ([rows, original heads], set by ``set_row_mask``) gives every sentence
  of a batch its own mask: one decode then evaluates several masks (the sentences
  repeated once per mask). Incremental decoding keeps each row's mask in the
  incremental state, so beam expansion, beam reordering and fairseq's dropping of
  finished sentences (``reorder_incremental_state``) carry it along.
* ``gate_heads`` makes the forward keep the (masked) context fed to ``out_proj`` as
  ``last_context`` [tgt_len, bsz, heads*d], in the autograd graph, and, when a mask is
  set, the context before the mask as ``last_context_unmasked`` (detached): one
  backward pass then gives ∂L/∂ξ at the current ξ per query position, sentence and
  head as Σ_d ctx_unmasked·∂L/∂ctx (see analysis/importance.py).
* Returned attention weights count only the heads that take part (present, ξ_h != 0):
  averaged weights are their mean; per-head weights (``need_head_weights``) have one
  row per present head, a masked head's row holding that same mean, so that fairseq's
  decoder, which averages the rows for alignments, gets the mean over the heads that
  take part. With no head taking part the weights are None.
* ``remove_heads`` deletes the heads' rows of q/k/v (weights and biases) and columns of
  ``out_proj``. Any number of heads may be removed, all of them included (the module
  then outputs its ``out_proj`` bias). ``head_index`` (a buffer that exists only once
  heads were removed) lists the original heads that remain, so a saved state dict says
  which heads it holds, and ``upgrade_state_dict_named`` can slice a full checkpoint
  down to a pruned module, or shrink a module to fit a pruned checkpoint.

``embed_dim`` keeps meaning the model dimension (input and output); the projected
dimension is ``num_heads * head_dim``.
"""

from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq import utils
from fairseq.modules.multihead_attention import MultiheadAttention

from ..errors import HeadPruneError


def prune_linear(layer: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A copy of ``layer`` keeping only ``index`` along ``dim`` of its weight
    (0: output rows, with their bias; 1: input columns). Zero-size results are fine."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = layer.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    new = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None)
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    new.weight.requires_grad = layer.weight.requires_grad
    if bias is not None:
        new.bias.requires_grad = layer.bias.requires_grad
    return new


def _beams_times_source(equation: str, x: Tensor, kv: Tensor, kv_bsz: int, H: int, last: int) -> Tensor:
    """fairseq's product of every beam of a sentence with that sentence's one cached
    key/value (encoder-decoder attention, ``set_beam_size``): [B*beam*H, T, ...] x
    [B*H, S, d], as in ``MultiheadAttention.forward``."""
    return torch.einsum(equation, x.view((kv_bsz, -1, H) + x.size()[1:]),
                        kv.view((kv_bsz, H) + kv.size()[1:])).reshape(-1, x.size(1), last)


class _FoldedLinear(nn.Module):
    """``out_proj`` with a masked copy of its weight, for one forward call: fairseq's
    code calls it (``self.out_proj(x)``) or reads ``.weight``/``.bias`` (fast path)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        super().__init__()
        self.__dict__["weight"], self.__dict__["bias"] = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class HeadMaskedMultiheadAttention(MultiheadAttention):
    """See the module docstring. Build with ``convert`` from a stock module."""

    head_kind: str = "?"
    head_layer: int = 0
    # 0/1 masks run fairseq's forward with out_proj's weight folded (False: this
    # package's attention path, which calls out_proj itself; for references and timing)
    fold_masks: bool = True
    # with gate_heads: keep ∂L/∂u in last_context.grad after a backward pass that the
    # caller runs itself (importance from fairseq-train's own training steps)
    retain_context_grad: bool = False

    @classmethod
    def convert(
        cls, module: MultiheadAttention, kind: str = "?", layer: int = 0
    ) -> "HeadMaskedMultiheadAttention":
        """Turn a stock fairseq MultiheadAttention into this class, in place."""
        if not isinstance(module, cls):
            if type(module) is not MultiheadAttention:
                raise HeadPruneError(
                    f"cannot add head masks to {type(module).__name__} "
                    f"(only fairseq.modules.MultiheadAttention is supported)"
                )
            if module.use_xformers:
                raise HeadPruneError(
                    "head masks do not support --use-xformers attention "
                    "(allowed: fairseq's default attention)"
                )
            module.__class__ = cls
            module._init_head_state()
        module.head_kind, module.head_layer = kind, layer
        return module

    def _init_head_state(self):
        self.orig_num_heads = self.num_heads
        self.kept_heads: List[int] = list(range(self.num_heads))  # original, 0-based
        self.register_buffer("head_mask", None, persistent=False)
        self.row_mask: Optional[Tensor] = None
        self._binary_mask = False  # head_mask holds only 0s and 1s: foldable
        self._folded: Optional[tuple] = None  # out_proj with the masked weight, and its key
        self._active: Optional[tuple] = None  # (heads present, how many take part, which, 1/n each)
        self.gate_heads = False
        self.last_context: Optional[Tensor] = None
        self.last_context_unmasked: Optional[Tensor] = None

    # ------------------------------------------------------------------ state
    @property
    def name(self) -> str:
        return f"{self.head_kind}:{self.head_layer}"

    @property
    def is_pruned(self) -> bool:
        return self.num_heads != self.orig_num_heads

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    def set_head_mask(self, mask: Optional[Tensor]):
        """``mask``: one value per original head (1 keeps, 0 masks), or None."""
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=self.out_proj.weight.dtype)
            if mask.shape != (self.orig_num_heads,):
                raise HeadPruneError(
                    f"{self.name}: head mask has shape {tuple(mask.shape)}, "
                    f"expected ({self.orig_num_heads},)"
                )
            mask = mask.to(self.out_proj.weight.device)
        self.head_mask = mask
        self._binary_mask = mask is not None and bool(((mask == 0) | (mask == 1)).all())
        self._folded = self._active = None

    def set_row_mask(self, mask: Optional[Tensor]):
        """``mask``: [rows, original heads] (1 keeps, 0 masks), row i for the batch's
        i-th sentence (beams of a sentence share its row), or None. Replaces
        ``head_mask`` while set."""
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=self.out_proj.weight.dtype)
            if mask.dim() != 2 or mask.size(1) != self.orig_num_heads:
                raise HeadPruneError(
                    f"{self.name}: row mask has shape {tuple(mask.shape)}, "
                    f"expected (rows, {self.orig_num_heads})"
                )
            mask = mask.to(self.out_proj.weight.device)
        self.row_mask = mask

    def _row_masks(self, bsz: int, incremental_state) -> Tensor:
        """[bsz, present heads] row masks of this call's batch rows."""
        key = "head_row_mask"
        if incremental_state is not None:
            saved = self.get_incremental_state(incremental_state, key)
            if saved is not None:
                return saved["mask"]
        mask = self.row_mask
        if self.is_pruned:
            mask = mask[:, self.kept_heads]
        rows = mask.size(0)
        if bsz != rows:
            if bsz % rows:
                raise HeadPruneError(f"{self.name}: a batch of {bsz} rows does not fit the "
                                     f"row mask of {rows} sentences")
            # fairseq's generator expands each sentence to its beams, side by side
            mask = mask.repeat_interleave(bsz // rows, dim=0)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, key, {"mask": mask})
        return mask

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """fairseq's reordering (beam search, finished sentences dropped), and each
        row's mask with its row."""
        incremental_state = super().reorder_incremental_state(incremental_state, new_order)
        if self.row_mask is None:  # no row masks in this decode (every step: keep it cheap)
            return incremental_state
        saved = self.get_incremental_state(incremental_state, "head_row_mask")
        if saved is not None:
            saved["mask"] = saved["mask"].index_select(0, new_order)
            incremental_state = self.set_incremental_state(incremental_state, "head_row_mask", saved)
        return incremental_state

    def _current_mask(self) -> Optional[Tensor]:
        if self.head_mask is None:
            return None
        if not self.is_pruned:
            return self.head_mask
        return self.head_mask[self.kept_heads]

    # ---------------------------------------------------------------- removal
    def _head_rows(self, positions: List[int]) -> Tensor:
        d = self.head_dim
        return torch.tensor(
            [p * d + i for p in positions for i in range(d)], dtype=torch.long
        )

    def removal_slices(self, heads: Iterable[int]) -> Dict[str, Tuple[int, Tensor]]:
        """What removing original heads ``heads`` (0-based) keeps of each parameter:
        {parameter name in this module: (dim, kept indices along dim)}, only for
        parameters that shrink ({} if none of ``heads`` is present). The one place that
        knows the layout; ``remove_heads`` and the optimizer-state surgery of pruning
        while training (tasks/train_pruning.py) both use it."""
        remove = set(heads) & set(self.kept_heads)
        if not remove:
            return {}
        rows = self._head_rows([i for i, h in enumerate(self.kept_heads) if h not in remove])
        out = {}
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"{proj}.weight"] = (0, rows)
            if getattr(self, proj).bias is not None:
                out[f"{proj}.bias"] = (0, rows)
        out["out_proj.weight"] = (1, rows)
        for name in ("bias_k", "bias_v"):
            p = getattr(self, name)
            if p is not None:
                out[name] = (p.dim() - 1, rows)
        return out

    def remove_heads(self, heads: Iterable[int]):
        """Remove original heads (0-based); heads already gone are ignored. q/k/v and
        out_proj become new modules (new parameters: an optimizer must be rebuilt)."""
        remove = set(heads) & set(self.kept_heads)
        if not remove:
            return
        positions = [i for i, h in enumerate(self.kept_heads) if h not in remove]
        rows = self.removal_slices(remove)["out_proj.weight"][1]
        self.q_proj = prune_linear(self.q_proj, rows, 0)
        self.k_proj = prune_linear(self.k_proj, rows, 0)
        self.v_proj = prune_linear(self.v_proj, rows, 0)
        self.out_proj = prune_linear(self.out_proj, rows, 1)
        for name in ("bias_k", "bias_v"):
            p = getattr(self, name)
            if p is not None:
                setattr(self, name, nn.Parameter(p.data[..., rows.to(p.device)].clone(),
                                                 requires_grad=p.requires_grad))
        self.kept_heads = [self.kept_heads[i] for i in positions]
        self.num_heads = len(self.kept_heads)
        self._folded = self._active = None
        index = torch.tensor(self.kept_heads, dtype=torch.long,
                             device=self.out_proj.weight.device)
        if "head_index" in self._buffers:
            self.head_index = index
        else:
            self.register_buffer("head_index", index)

    def _adaptive_prune_heads(self, reserve_head_index: List[Tuple[int, int]]):
        """fairseq's own head-pruning API (``MultiheadAttention._adaptive_prune_heads``,
        used by RoBERTa's ``--mha-heads-to-keep`` with ``_get_reserve_head_index``):
        keep the heads whose (start, end) column spans are given, remove the others.
        fairseq's version slices the weights but leaves a head mask, ``kept_heads`` and
        bias_k/bias_v as they were (shape mismatch at the next forward); this one goes
        through ``remove_heads``, so masks and recorded removals stay consistent. The
        kept heads stay in their original order (fairseq's reorders them by norm: the
        same function, q/k/v and out_proj permuted alike)."""
        keep = set()
        for start, end in reserve_head_index:
            start, end = int(start), int(end)
            pos = start // self.head_dim
            if (start % self.head_dim or end != start + self.head_dim
                    or not 0 <= pos < self.num_heads):
                raise HeadPruneError(
                    f"{self.name}: head span ({start}, {end}) is not one head of this module "
                    f"(allowed: (h*{self.head_dim}, (h+1)*{self.head_dim}) for h in 0-{self.num_heads - 1})")
            keep.add(self.kept_heads[pos])
        self.remove_heads(h for h in self.kept_heads if h not in keep)

    def upgrade_state_dict_named(self, state_dict, name):
        """Fit a state dict with any subset of this module's original heads."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = name + "." if name else ""
        if prefix + "q_proj.weight" not in state_dict:
            return
        if prefix + "head_index" in state_dict:
            incoming = [int(h) for h in state_dict[prefix + "head_index"].tolist()]
        else:
            incoming = list(range(self.orig_num_heads))
        rows_in = state_dict[prefix + "q_proj.weight"].size(0)
        if rows_in != len(incoming) * self.head_dim or any(
            h >= self.orig_num_heads for h in incoming
        ):
            raise HeadPruneError(
                f"checkpoint does not fit {self.name} ({prefix[:-1]}): it holds "
                f"{rows_in // max(self.head_dim, 1)} heads of size {self.head_dim} "
                f"(head_index {incoming}), the model has {self.orig_num_heads} heads"
            )
        target = [h for h in self.kept_heads if h in set(incoming)]
        # Adopt the checkpoint's removals (fine-tuning a pruned model).
        self.remove_heads(set(self.kept_heads) - set(target))
        if incoming != target:
            rows = self._head_rows([incoming.index(h) for h in target])
            for proj in ("q_proj", "k_proj", "v_proj"):
                for p in ("weight", "bias"):
                    k = f"{prefix}{proj}.{p}"
                    if k in state_dict:
                        state_dict[k] = state_dict[k].index_select(0, rows)
            k = prefix + "out_proj.weight"
            state_dict[k] = state_dict[k].index_select(1, rows)
            for b in ("bias_k", "bias_v"):
                if prefix + b in state_dict:
                    state_dict[prefix + b] = state_dict[prefix + b][..., rows]
        if self.is_pruned:
            state_dict[prefix + "head_index"] = torch.tensor(target, dtype=torch.long)
        else:
            state_dict.pop(prefix + "head_index", None)

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        f = self._folded
        if (f is not None and not before_softmax and not torch.is_grad_enabled()
                and (incremental_state is not None or not (need_weights or need_head_weights))
                and f[0]._version == f[1] and f[0].data_ptr() == f[2]
                and self._modules["out_proj"] is f[4] and not self.gate_heads
                and self.row_mask is None and self.fold_masks):
            # the folded 0/1 mask, still valid: fairseq's forward with as little
            # Python around it as possible (this runs at every decoding step)
            return self._forward_folded(f[3], query, key, value, key_padding_mask,
                                        incremental_state, need_weights, static_kv, attn_mask,
                                        need_head_weights)
        plain = not self.gate_heads and not self.is_pruned and self.row_mask is None
        if plain and self.head_mask is None:
            return super().forward(
                query, key, value, key_padding_mask, incremental_state,
                need_weights, static_kv, attn_mask, before_softmax, need_head_weights,
            )
        if need_head_weights:
            need_weights = True
        if plain and self._binary_mask and self.fold_masks and not before_softmax and (
                not need_weights or incremental_state is not None):
            return self._forward_folded(self._folded_linear(), query, key, value,
                                        key_padding_mask, incremental_state, need_weights,
                                        static_kv, attn_mask, need_head_weights)
        if self.num_heads == 0:
            return self._forward_no_heads(query)
        rows = None
        if self.row_mask is not None:
            rows = self._row_masks(query.size(1), incremental_state)
        if incremental_state is None and not need_weights and not before_softmax:
            ctx = self._context_sdpa(query, key, value, key_padding_mask, static_kv,
                                     attn_mask)
            weights = None
        else:
            ctx, weights = self._context_python(
                query, key, value, key_padding_mask, incremental_state, static_kv,
                attn_mask, before_softmax,
            )
            if before_softmax:
                return ctx, weights
        out = self.out_proj(self._scale_heads(ctx, rows))
        if need_weights:
            tgt_len, bsz = query.shape[:2]
            weights = weights.view(bsz, self.num_heads, tgt_len, -1).transpose(1, 0)
            if rows is not None:
                weights = self._row_weights(weights, rows, need_head_weights)
            else:
                weights = self._returned_weights(weights, need_head_weights)
        return out, weights

    def _forward_folded(self, folded: "_FoldedLinear", query, key, value, key_padding_mask,
                        incremental_state, need_weights, static_kv, attn_mask, need_head_weights):
        """fairseq's own forward with ``folded`` (the 0/1 mask folded into ``out_proj``'s
        weight) as ``out_proj``. Weights, when asked for (incremental decoding), come per
        head from fairseq and are averaged over the heads that take part, as on the
        other path."""
        need_weights = need_weights or need_head_weights
        modules = self._modules
        full = modules["out_proj"]
        modules["out_proj"] = folded
        try:
            out, weights = MultiheadAttention.forward(
                self, query, key, value, key_padding_mask, incremental_state, need_weights,
                static_kv, attn_mask, False, need_weights)
        finally:
            modules["out_proj"] = full
        if need_weights and weights is not None:
            weights = self._returned_weights(weights, need_head_weights)
        return out, weights

    def _folded_linear(self) -> "_FoldedLinear":
        out_proj = self.out_proj
        w, b = out_proj.weight, out_proj.bias
        if torch.is_grad_enabled() and w.requires_grad:
            # in the graph: masked columns get no gradient
            return _FoldedLinear(w * self._columns(w), b)
        # (weight, its version and storage, the folded copy, out_proj), kept while the
        # weight is unchanged (an in-place update or .to()/.half() makes a new copy)
        f = self._folded
        if (f is None or f[0] is not w or f[1] != w._version or f[2] != w.data_ptr()
                or f[3].bias is not b or f[4] is not out_proj):
            with torch.no_grad():
                f = self._folded = (w, w._version, w.data_ptr(),
                                    _FoldedLinear(w * self._columns(w), b), out_proj)
        return f[3]

    def _columns(self, w: Tensor) -> Tensor:
        return self.head_mask.to(w.dtype).repeat_interleave(self.head_dim)

    def _row_weights(self, weights: Tensor, rows: Tensor, need_head_weights: bool) -> Tensor:
        """Per-row version of ``_returned_weights``: the mean over each row's heads that
        take part (zeros for a row where none does; only alignments read them)."""
        active = rows.ne(0).to(weights.dtype).t().reshape(self.num_heads, -1, 1, 1)  # [H, B, 1, 1]
        mean = (weights * active).sum(0) / active.sum(0).clamp(min=1)
        if not need_head_weights:
            return mean
        return torch.where(active.bool(), weights, mean.unsqueeze(0))

    def _returned_weights(self, weights: Tensor, need_head_weights: bool) -> Optional[Tensor]:
        """weights [heads, B, T, S] of the present heads -> what forward returns: the
        mean over heads with ξ != 0 ([B, T, S]), or with ``need_head_weights`` every
        present head's row, masked heads' rows replaced by that mean (fairseq's decoder
        averages these rows for --print-alignment; a first-k slice of them, as with
        alignment_heads, mixes in that mean); None when no head takes part."""
        mask = self._current_mask()
        if mask is None:
            return weights if need_head_weights else weights.mean(dim=0)
        # which heads take part, worked out once per mask (this runs at every step)
        if self._active is None or self._active[0] != self.num_heads:
            on = mask.ne(0)
            n = int(on.sum())
            self._active = (self.num_heads, n, on, on.float() / max(n, 1))
        _, n, active, share = self._active
        if n == self.num_heads:
            return weights if need_head_weights else weights.mean(dim=0)
        if n == 0:
            return None  # like a module without heads: nothing attends
        # the mean over the heads taking part, as one product (no copy of their rows;
        # this runs at every decoding step): [H] x [B, H, T*S] -> [B, T*S]
        H, B, T, S = weights.shape
        if share.dtype != weights.dtype or share.device != weights.device:
            share = share.to(weights)
        mean = torch.matmul(share, weights.transpose(0, 1).reshape(B, H, T * S)).view(B, T, S)
        if not need_head_weights:
            return mean
        return torch.where(active.to(weights.device).view(-1, 1, 1, 1), weights, mean.unsqueeze(0))

    def _scale_heads(self, ctx: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """ctx [T, B, heads*d] -> each head's slice times its mask (``rows``: one mask
        per batch row); with gate_heads, remember the result for the importance pass."""
        mask = self._current_mask() if rows is None else rows
        if mask is None and not self.gate_heads:
            return ctx
        T, B, _ = ctx.shape
        unmasked = ctx
        if mask is not None:
            shape = (1, 1, -1, 1) if rows is None else (1, B, -1, 1)
            ctx = ctx.view(T, B, self.num_heads, self.head_dim) * mask.to(ctx.dtype).view(shape)
        ctx = ctx.reshape(T, B, self.inner_dim)
        if self.gate_heads:
            # out_proj's input is u_h = ξ_h·c_h, so ∂L/∂ξ_h = Σ_d c_h · ∂L/∂u_h: keep u
            # (in the graph) and, under a mask, c too, since for a masked head u_h = 0
            # while its gradient is not. Without a mask c = u and nothing is copied.
            # (Below the first layer whose weights are frozen nothing requires grad, so
            # the first gated context becomes a leaf; no gradient is lost by that.)
            if not ctx.requires_grad:
                ctx = ctx.detach().requires_grad_()
            elif self.retain_context_grad:
                ctx.retain_grad()
            self.last_context = ctx
            self.last_context_unmasked = None if mask is None else unmasked.detach()
        return ctx

    def _forward_no_heads(self, query):
        tgt_len, bsz, _ = query.shape
        out = query.new_zeros(tgt_len, bsz, self.out_proj.out_features)
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias
        # No head attends anywhere: weights are None (an average over zero heads is
        # NaN). fairseq's decoder and SequenceGenerator accept None; its
        # --print-alignment generator does not (tests/test_attention_weights.py).
        return out, None

    def _project(self, query, key, value):
        if self.self_attention:
            return self.q_proj(query), self.k_proj(query), self.v_proj(query)
        if self.encoder_decoder_attention:
            return self.q_proj(query), self.k_proj(key), self.v_proj(key)
        return self.q_proj(query), self.k_proj(key), self.v_proj(value)

    def _context_sdpa(self, query, key, value, key_padding_mask, static_kv, attn_mask):
        """Non-incremental attention through torch's fused kernel; ctx [T, B, inner]."""
        tgt_len, bsz, _ = query.shape
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None:
            k, v, key_padding_mask, attn_mask = self._add_bias(
                k, v, key_padding_mask, attn_mask, bsz
            )
        H, d = self.num_heads, self.head_dim

        def heads(x):  # [S, B, H*d] -> [B, H, S, d]
            return x.contiguous().view(x.size(0), bsz, H, d).permute(1, 2, 0, 3)

        q, k, v = heads(q), heads(k), heads(v)
        if self.add_zero_attn:
            k, v, key_padding_mask, attn_mask = self._append_zero_attn(
                k, v, key_padding_mask, attn_mask
            )
        src_len = k.size(2)
        mask = None
        if attn_mask is not None:
            mask = attn_mask.to(q.dtype) if attn_mask.dtype != torch.bool else (
                torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
            )
            mask = mask.view(1, 1, tgt_len, src_len)
        if key_padding_mask is not None:
            pad = q.new_zeros(bsz, 1, 1, src_len).masked_fill(
                key_padding_mask.to(torch.bool).view(bsz, 1, 1, src_len), float("-inf")
            )
            mask = pad if mask is None else mask + pad
        p = self.dropout_module.p if (
            self.training or self.dropout_module.apply_during_inference
        ) else 0.0
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, scale=self.scaling
        )  # [B, H, T, d]
        return ctx.permute(2, 0, 1, 3).reshape(tgt_len, bsz, H * d)

    def _context_python(self, query, key, value, key_padding_mask, incremental_state,
                        static_kv, attn_mask, before_softmax):
        """fairseq's own attention arithmetic for any head count; ctx [T, B, inner]
        and softmaxed weights [B*heads, T, S] (or raw scores and v if before_softmax)."""
        tgt_len, bsz, _ = query.size()
        H, d = self.num_heads, self.head_dim
        saved_state = None
        if incremental_state is not None:
            saved_state = self._get_input_buffer(incremental_state)
            if saved_state is not None and "prev_key" in saved_state and static_kv:
                key = value = None
        q = self.q_proj(query)
        k = v = None
        if self.self_attention:
            k, v = self.k_proj(query), self.v_proj(query)
        elif self.encoder_decoder_attention:
            if key is not None:
                if self.beam_size > 1 and bsz == key.size(1):
                    key = key.view(key.size(0), -1, self.beam_size, key.size(2))[:, :, 0, :]
                    if key_padding_mask is not None:
                        key_padding_mask = key_padding_mask.view(
                            -1, self.beam_size, key_padding_mask.size(1)
                        )[:, 0, :]
                k, v = self.k_proj(key), self.v_proj(key)
        else:
            k, v = self.k_proj(key), self.v_proj(value)
        q = q * self.scaling
        if self.bias_k is not None:
            k, v, attn_mask, key_padding_mask = self._add_bias(
                k, v, attn_mask, key_padding_mask, bsz
            )
        q = q.contiguous().view(tgt_len, bsz * H, d).transpose(0, 1)
        kv_bsz = bsz
        if k is not None:
            kv_bsz = k.size(1)
            k = k.contiguous().view(-1, kv_bsz * H, d).transpose(0, 1)
            v = v.contiguous().view(-1, kv_bsz * H, d).transpose(0, 1)
        if saved_state is not None:
            if "prev_key" in saved_state:
                kv_bsz = saved_state["prev_key"].size(0)
                prev_key = saved_state["prev_key"].view(kv_bsz * H, -1, d)
                prev_value = saved_state["prev_value"].view(kv_bsz * H, -1, d)
                if static_kv:
                    k, v = prev_key, prev_value
                else:
                    k = torch.cat([prev_key, k], dim=1)
                    v = torch.cat([prev_value, v], dim=1)
            key_padding_mask = MultiheadAttention._append_prev_key_padding_mask(
                key_padding_mask=key_padding_mask,
                prev_key_padding_mask=saved_state.get("prev_key_padding_mask"),
                batch_size=kv_bsz,
                src_len=k.size(1),
                static_kv=static_kv,
            )
            saved_state["prev_key"] = k.view(kv_bsz, H, -1, d)
            saved_state["prev_value"] = v.view(kv_bsz, H, -1, d)
            saved_state["prev_key_padding_mask"] = key_padding_mask
            incremental_state = self._set_input_buffer(incremental_state, saved_state)
        src_len = k.size(1)
        if key_padding_mask is not None and key_padding_mask.dim() == 0:
            key_padding_mask = None
        if self.add_zero_attn:
            src_len += 1
            k, v, key_padding_mask, attn_mask = self._append_zero_attn(
                k=k, v=v, key_padding_mask=key_padding_mask, attn_mask=attn_mask
            )
        shared_kv = self.encoder_decoder_attention and bsz != kv_bsz
        if shared_kv:
            attn_weights = _beams_times_source("bxhtd,bhsd->bxhts", q, k, kv_bsz, H, src_len)
        else:
            attn_weights = torch.bmm(q, k.transpose(1, 2))
        if attn_mask is not None:
            attn_weights += attn_mask.unsqueeze(0)
        if key_padding_mask is not None:
            attn_weights = attn_weights.view(kv_bsz, -1, H, tgt_len, src_len)
            attn_weights = attn_weights.masked_fill(
                key_padding_mask.unsqueeze(1).unsqueeze(2).unsqueeze(3).to(torch.bool),
                float("-inf"),
            )
            attn_weights = attn_weights.view(bsz * H, tgt_len, src_len)
        if before_softmax:
            return attn_weights, v
        weights_float = utils.softmax(attn_weights, dim=-1)
        probs = self.dropout_module(weights_float.type_as(attn_weights))
        if shared_kv:
            ctx = _beams_times_source("bxhts,bhsd->bxhtd", probs, v, kv_bsz, H, d)
        else:
            ctx = torch.bmm(probs, v)
        ctx = ctx.transpose(0, 1).contiguous().view(tgt_len, bsz, H * d)
        return ctx, weights_float

    # ------------------------------------------------------------- TorchScript
    def __prepare_scriptable__(self):
        """torch.jit.script calls this on every submodule: this module becomes, in
        place, a stock module that computes the same (modules/deploy.py)."""
        from .deploy import make_stock

        return make_stock(self)
