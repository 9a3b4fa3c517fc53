"""The elastic supernet: a frozen base model plus stage-wise adapters, and its few verbs.

Verbs: ``set_max``, ``set_active``, ``sample``, ``extract`` (plus ``set_stage`` for training). Nothing else
mutates it. With an active config the forward computes exactly that subnet, slicing weights on the fly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, MergeError
from ..spec.dims import ModelDims
from ..spec.search_space import SearchSpace
from ..spec.shapes import parameter_shapes
from ..spec.subnet_config import SubnetConfig
from .adapters import TARGET_PATHS, AdaptedLinear, AdapterSettings, LowRankStack, StageDeltas, all_finite
from .factory import build_model
from .model import SlicedTransformer

_LAYER = re.compile(r"^layers\.(\d+)\.")
_PARAMETRIZED = re.compile(r"parametrizations\.(\w+)\.original$")
_DELTA_STATE = re.compile(r"\.parametrizations\.\w+\.0\.")


def vector_names(dims: ModelDims) -> list[str]:
    """The base tensors that get stage-wise vector deltas: every 1-D tensor (norm weights/biases, linear biases),
    the task head aside."""
    weights = parameter_shapes(dims, SubnetConfig.maximal(dims))
    return [k for k, v in weights.items() if len(v) == 1 and not k.startswith("head.")]


def head_delta_stages(settings: AdapterSettings) -> tuple[int, ...]:
    """Stages with a head delta: all but stage 0, which trains the head itself."""
    return tuple(range(1, settings.stages)) if settings.head else ()


def adapter_shapes(dims: ModelDims, settings: AdapterSettings) -> dict[str, tuple[int, ...]]:
    """Every stage-wise tensor of a supernet over ``dims``, by name (``layers.0.attn.q.A.2``,
    ``layers.0.attn_norm.weight.delta.1``, ``head.bias.delta.2``), without building it. Head deltas are listed
    when ``dims`` has labels."""
    settings = settings.for_family(dims.family)
    weights = parameter_shapes(dims, SubnetConfig.maximal(dims))
    shapes = {}
    for i in range(dims.num_layers):
        for target in settings.targets:
            path = f"layers.{i}.{TARGET_PATHS[target]}"
            out_f, in_f = weights[f"{path}.weight"]
            for s, r in enumerate(settings.ranks):
                shapes[f"{path}.A.{s}"] = (out_f, r)
                shapes[f"{path}.B.{s}"] = (r, in_f)
    if settings.vectors:
        for name in vector_names(dims):
            for s in range(settings.stages):
                shapes[f"{name}.delta.{s}"] = weights[name]
    if dims.num_labels:
        for name in ("head.weight", "head.bias"):
            for s in head_delta_stages(settings):
                shapes[f"{name}.delta.{s}"] = weights[name]
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
                stack = LowRankStack(linear.in_features, linear.out_features, self.settings.ranks, self.settings.scales)
                stack = stack.to(device=linear.weight.device, dtype=linear.weight.dtype)
                setattr(parent, name, AdaptedLinear(linear, stack))
        # Vector and head deltas: parametrizations, so every reader of the tensor (forward, extract) sees
        # base + deltas; kept by plain tensor name (``layers.0.attn_norm.weight``).
        self.deltas: dict[str, StageDeltas] = {}
        wanted = {n: tuple(range(self.settings.stages)) for n in (vector_names(self.dims) if self.settings.vectors else [])}
        if getattr(base, "head", None) is not None:
            wanted.update({n: head_delta_stages(self.settings) for n in ("head.weight", "head.bias")})
        for name, stages in wanted.items():
            if not stages:
                continue
            module, param = self._owner(name)
            tensor = getattr(module, param)
            deltas = StageDeltas(tensor.shape, stages).to(device=tensor.device, dtype=tensor.dtype)
            parametrize.register_parametrization(module, param, deltas)
            self.deltas[name] = deltas

    def _owner(self, name: str) -> tuple[nn.Module, str]:
        """The module holding base tensor ``name`` (the wrapped layer of an adapted one) and the tensor's name."""
        module_path, param = name.rsplit(".", 1)
        module = self.model.get_submodule(module_path)
        return (module.base if isinstance(module, AdaptedLinear) else module), param

    def _base_tensor(self, module: nn.Module, param: str) -> torch.Tensor:
        """The stored tensor without its deltas (the parametrization's original when there is one)."""
        if parametrize.is_parametrized(module, param):
            return module.parametrizations[param].original
        return getattr(module, param)

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
        for deltas in self.deltas.values():
            deltas.set_stage(stage)

    @contextmanager
    def only_stages(self, last: int) -> Iterator[None]:
        """Compute with stages 0..``last`` only (e.g. the frozen stage-0 teacher while stage 2 trains)."""
        parts = [*self.adapter_stacks().values(), *self.deltas.values()]
        saved = [p.upto for p in parts]
        for p in parts:
            p.upto = min(p.upto, last + 1)
        try:
            yield
        finally:
            for p, upto in zip(parts, saved):
                p.upto = upto

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
                state[name] = module.effective_weight(*shape).detach()  # a new tensor already: no second copy
                continue
            owner, param = self._owner(source)
            # getattr: base + vector deltas (a parametrization); merge=False: the stored base tensor alone
            tensor = getattr(owner, param) if merge else self._base_tensor(owner, param)
            tensor = tensor[tuple(slice(0, n) for n in shape)]
            if merge and not all_finite(tensor):
                raise MergeError(f"merging the deltas of {source} produced non-finite values")
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
        """Stage-wise tensors by name: ``layers.0.attn.q.A.2``, ``layers.0.attn_norm.weight.delta.1``, ..."""
        state = {f"{name}.{k}": v for name, stack in self.adapter_stacks().items() for k, v in stack.state_dict().items()}
        for name, deltas in self.deltas.items():
            state.update({f"{name}.delta.{s}": d for s, d in deltas.deltas.items()})
        return state

    def head_tensors(self) -> dict[str, nn.Parameter]:
        """The task head's own tensors (``head.weight``, ``head.bias``, without their deltas); empty without a head."""
        head = getattr(self.model, "head", None)
        return {} if head is None else {f"head.{k}": self._base_tensor(head, k) for k in ("weight", "bias")}

    def head_state(self) -> dict[str, torch.Tensor]:
        """The task head's tensors (``head.weight``, ``head.bias``), empty without a head."""
        return dict(self.head_tensors())

    def base_state(self) -> dict[str, torch.Tensor]:
        """The base model's tensors under their plain names (as in ``shapes.py``), adapters and deltas excluded."""
        state = self.model.state_dict()
        return {_PARAMETRIZED.sub(r"\1", k.replace(".base.", ".")): v for k, v in state.items()
                if ".adapter." not in k and not _DELTA_STATE.search(k)}

    def merge(self) -> None:
        """Fold every adapter and delta into its base tensor: all or nothing, idempotent, refuses non-finite results."""
        layers = [m for m in self.adapted_layers().values() if not m.merged]
        for layer in layers:  # raises MergeError before any weight changes
            layer.effective_weight(layer.base.out_features, layer.base.in_features)
        deltas = {n: d for n, d in self.deltas.items() if not d.merged}
        merged = {}
        for name in deltas:
            module, param = self._owner(name)
            merged[name] = getattr(module, param).detach().clone()
            if not all_finite(merged[name]):
                raise MergeError(f"merging the deltas of {name} produced non-finite values")
        for layer in layers:
            layer.merge()
        with torch.no_grad():
            for name, d in deltas.items():
                self._base_tensor(*self._owner(name)).copy_(merged[name])
                d.merged = True

    def active_adapter_numbers(self, cfg: SubnetConfig | None = None, stages: tuple[int, ...] | None = None) -> int:
        """Adapter numbers that subnet ``cfg`` uses (the n_j of gradient scaling), over ``stages`` (all)."""
        cfg = cfg or self.max_config
        stages = range(self.settings.stages) if stages is None else stages
        shapes = parameter_shapes(self.dims, cfg)
        total = 0
        ranks = self.settings.ranks
        for j in range(len(cfg.layers)):
            for target in self.settings.targets:
                out_f, in_f = shapes[f"layers.{j}.{TARGET_PATHS[target]}.weight"]
                total += sum(ranks[s] for s in stages) * (out_f + in_f)
        return total
