"""How the policy is spread over ranks for training (DDP or FSDP2), and the sampler's copy of it.

Why this file exists: the trainer and the sampler want the same weights in different
shapes. The trainer wants them replicated (DDP, the default: every rank holds fp32
weights, grads and AdamW moments, ~16 bytes a parameter) or sharded (`--fsdp`:
`torch.distributed.fsdp.fully_shard`, each rank holds 1/W of them). The sampler wants
whole weights, in bf16 on a GPU, and must never all-gather per decoded token. So:

    train_module = wrap(model, info, fsdp)     # DDP(model), fully_shard(model) or model itself
    rollout = RolloutCopy(model, info, fsdp)   # the sampler's model
    rollout.refresh()                          # once per RL step, after the optimizer steps

RolloutCopy is the live module itself on CPU without FSDP (fp32, nothing to copy: the
numerics of the CPU path). Otherwise it is an unsharded copy, bf16 on CUDA (fp32 on CPU),
filled from the live weights once per step: each FSDP2 DTensor shard is cast to the copy's
dtype and gathered with `full_tensor()`, one parameter at a time, so the extra peak is one
parameter. The sampler's log-probs then come from bf16 weights while the trainer's come from
fp32 master weights under bf16 autocast; `logp_gap` in metrics.jsonl measures the difference.

Simplified away: tensor / pipeline parallelism, CPU offload, hybrid sharding (HSDP).
"""
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fapo_mini.dist import DistInfo
from fapo_mini.model import Qwen


def mixed_precision(device: torch.device):
    """FSDP2's policy: bf16 compute weights on CUDA (fp32 on CPU, like the rest of the CPU path),
    gradients reduced in fp32; the sharded master weights and AdamW moments stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    param_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def shard_model(model: Qwen, mp_policy=None) -> Qwen:
    """fully_shard each decoder block, then the root (embeddings, final norm, lm_head, tied or not).
    `token_logprobs` runs lm_head outside forward(), so it is registered as a forward method:
    FSDP2 gathers the root's weights for it too. Returns the same module, now sharded."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy)
    register_fsdp_forward_method(model, "token_logprobs")
    return model


def wrap(model: Qwen, info: DistInfo, fsdp: bool):
    """The module the trainer runs: FSDP2-sharded (`fsdp`), DDP (several ranks) or `model` (one).
    DDP's gradients are views into its all-reduce buckets (`gradient_as_bucket_view`): one
    fp32 copy of the gradients fewer."""
    if fsdp:
        return shard_model(model, mixed_precision(info.device))
    if info.world_size > 1:
        return DDP(model, gradient_as_bucket_view=True)
    return model


def unwrap(module):
    """The Qwen inside a DDP wrapper (FSDP2 shards in place: its module is the Qwen)."""
    return getattr(module, "module", module)


def is_dtensor(t) -> bool:
    """Is `t` an FSDP2 shard (a DTensor)?"""
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def is_fsdp(module) -> bool:
    """Is `module` FSDP2-sharded?"""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def _full(p: torch.Tensor) -> torch.Tensor:
    """A whole parameter: FSDP2's DTensor shards are all-gathered (a collective: every rank calls)."""
    return p.full_tensor() if is_dtensor(p) else p


class RolloutCopy:
    """The sampler's model. `.model` is the live module (CPU, no FSDP) or an unsharded copy
    in `dtype` that `refresh()` fills from the live weights."""

    def __init__(self, live: Qwen, info: DistInfo, fsdp: bool):
        self.live = live
        self.dtype = torch.bfloat16 if info.device.type == "cuda" else torch.float32
        self.is_copy = fsdp or info.device.type == "cuda"
        if not self.is_copy:
            self.model = live
            return
        with torch.device("meta"):
            copy = Qwen(live.cfg)
        copy.to_empty(device=info.device).to(self.dtype)
        if live.cfg.tie_word_embeddings:  # to_empty made two tensors of the shared one: tie again
            copy.lm_head.weight = copy.model.embed_tokens.weight
        copy.generation_config = live.generation_config      # the sampler's stop set reads its EOS ids
        self.model = copy.eval().requires_grad_(False)
        self.refresh()

    @torch.no_grad()
    def refresh(self):
        """Copy the live weights in; call on every rank at once (FSDP2 gathers), once per RL step."""
        if not self.is_copy:
            return
        dst = dict(self.model.named_parameters())
        for name, p in self.live.named_parameters():
            dst[name].copy_(_full(p.detach().to(self.dtype)))     # cast the shard first: half the traffic


def full_state_dict(module) -> dict:
    """The whole fp32 state dict on CPU, on rank 0 (FSDP2: gathered, a collective every rank calls;
    the other ranks get {}). For a plain or DDP module, its own state dict."""
    inner = unwrap(module)
    if not any(is_dtensor(p) for p in inner.parameters()):
        return inner.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def model_from_state_dict(cfg, sd: dict) -> Qwen:
    """A plain CPU Qwen holding `sd` (what save_model writes); ties the head again if the config does."""
    with torch.device("meta"):
        model = Qwen(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model
