"""The elastic supernet: a frozen base model plus stage-wise adapters, and its few verbs.

Verbs: ``set_max``, ``set_active``, ``sample``, ``extract`` (plus ``set_stage`` for training). Nothing else
mutates it. With an active config the forward computes exactly that subnet, slicing weights on the fly.
"""

from __future__ import annotations

import random
import re

import torch
from torch import nn

from ..errors import ConfigError
from ..spec.dims import ModelDims
from ..spec.search_space import SearchSpace
from ..spec.shapes import parameter_shapes
from ..spec.subnet_config import SubnetConfig
from .adapters import TARGET_PATHS, AdaptedLinear, AdapterSettings, LowRankStack
from .factory import build_model
from .model import SlicedTransformer

_LAYER = re.compile(r"^layers\.(\d+)\.")


def adapter_shapes(dims: ModelDims, settings: AdapterSettings) -> dict[str, tuple[int, ...]]:
    """Every adapter tensor of a supernet over ``dims``, by name (``layers.0.attn.q.A.2``), without building it."""
    settings = settings.for_family(dims.family)
    weights = parameter_shapes(dims, SubnetConfig.maximal(dims))
    shapes = {}
    for i in range(dims.num_layers):
        for target in settings.targets:
            path = f"layers.{i}.{TARGET_PATHS[target]}"
            out_f, in_f = weights[f"{path}.weight"]
            for s in range(settings.stages):
                shapes[f"{path}.A.{s}"] = (out_f, settings.rank)
                shapes[f"{path}.B.{s}"] = (settings.rank, in_f)
    return shapes


class Supernet(nn.Module):
    def __init__(
        self, base: SlicedTransformer, settings: AdapterSettings | None = None, space: SearchSpace | None = None
    ) -> None:
        super().__init__()
        if not base.is_elastic:
            raise ConfigError("supernet: the base model must be built at its maximal config")
        self.model = base
        self.space = (space or SearchSpace.default(base.dims)).validate(base.dims)
        self.settings = (settings or AdapterSettings()).for_family(base.dims.family)
        for p in base.parameters():
            p.requires_grad_(False)
        self.stage = 0
        for layer in base.layers:
            for target in self.settings.targets:
                parent_path, name = TARGET_PATHS[target].rsplit(".", 1)
                parent = layer.get_submodule(parent_path)
                linear = getattr(parent, name)
                stack = LowRankStack(linear.in_features, linear.out_features, self.settings.rank,
                                     self.settings.stages, self.settings.scale)
                stack = stack.to(device=linear.weight.device, dtype=linear.weight.dtype)
                setattr(parent, name, AdaptedLinear(linear, stack))

    @property
    def dims(self) -> ModelDims:
        return self.model.dims

    # ----- verbs --------------------------------------------------------------------------------------------
    @property
    def max_config(self) -> SubnetConfig:
        return SubnetConfig.maximal(self.dims)

    def set_max(self) -> None:
        self.model.set_active(self.max_config)

    def set_active(self, cfg: SubnetConfig) -> None:
        self.model.set_active(cfg)

    @property
    def active(self) -> SubnetConfig:
        return self.model.active

    def sample(self, rng: random.Random, vary_depth: bool = True) -> SubnetConfig:
        """A random config from the search space (does not activate it)."""
        return self.space.sample(self.dims, rng, vary_depth)

    def set_stage(self, stage: int) -> None:
        """Train only stage ``stage``'s adapters; earlier stages are frozen."""
        if not 0 <= stage < self.settings.stages:
            raise ConfigError(f"stage: {stage} out of range; allowed 0..{self.settings.stages - 1}")
        self.stage = stage
        for stack in self.adapter_stacks().values():
            stack.set_stage(stage)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def extract(self, cfg: SubnetConfig, merge: bool = True) -> SlicedTransformer:
        """A standalone static model of ``cfg``: only the kept weights, adapters merged in.

        ``merge=False`` takes the base weights alone (the naive cut; benchmarks time slicing apart from merging).
        """
        cfg = cfg.validate(self.dims)
        state = {}
        for name, shape in parameter_shapes(self.dims, cfg).items():
            source = _LAYER.sub(lambda m: f"layers.{cfg.layers[int(m.group(1))]}.", name)
            module_path, param = source.rsplit(".", 1)
            module = self.model.get_submodule(module_path)
            if merge and isinstance(module, AdaptedLinear) and param == "weight":
                tensor = module.effective_weight(*shape)
            else:
                module = module.base if isinstance(module, AdaptedLinear) else module
                tensor = getattr(module, param)[tuple(slice(0, n) for n in shape)]
            state[name] = tensor.detach().clone()
        device = next(self.model.parameters()).device
        subnet = build_model(self.dims, cfg, device="meta")
        subnet.load_state_dict(state, assign=True)
        return subnet.to(device).eval()

    # ----- adapters -----------------------------------------------------------------------------------------
    def adapted_layers(self) -> dict[str, AdaptedLinear]:
        return {name: m for name, m in self.model.named_modules() if isinstance(m, AdaptedLinear)}

    def adapter_stacks(self) -> dict[str, LowRankStack]:
        return {name: m.adapter for name, m in self.adapted_layers().items()}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Adapter tensors by name, e.g. ``layers.0.attn.q.A.2``."""
        return {f"{name}.{k}": v for name, stack in self.adapter_stacks().items() for k, v in stack.state_dict().items()}

    def head_state(self) -> dict[str, torch.Tensor]:
        """The task head's tensors (``head.weight``, ``head.bias``), empty without a head."""
        head = getattr(self.model, "head", None)
        return {} if head is None else {f"head.{k}": v for k, v in head.state_dict().items()}

    def base_state(self) -> dict[str, torch.Tensor]:
        """The base model's tensors under their plain names (as in ``shapes.py``), adapters excluded."""
        state = self.model.state_dict()
        return {k.replace(".base.", "."): v for k, v in state.items() if ".adapter." not in k}

    def merge(self) -> None:
        """Fold every adapter into its base weight: all or nothing, idempotent, refuses non-finite results."""
        layers = [m for m in self.adapted_layers().values() if not m.merged]
        for layer in layers:  # raises MergeError before any weight changes
            layer.effective_weight(layer.base.out_features, layer.base.in_features)
        for layer in layers:
            layer.merge()

    def active_adapter_numbers(self, cfg: SubnetConfig | None = None, stages: tuple[int, ...] | None = None) -> int:
        """Adapter numbers that subnet ``cfg`` uses (the n_j of gradient scaling), over ``stages`` (all)."""
        cfg = cfg or self.max_config
        stages = range(self.settings.stages) if stages is None else stages
        shapes = parameter_shapes(self.dims, cfg)
        total = 0
        for j in range(len(cfg.layers)):
            for target in self.settings.targets:
                out_f, in_f = shapes[f"layers.{j}.{TARGET_PATHS[target]}.weight"]
                total += len(stages) * self.settings.rank * (out_f + in_f)
        return total
