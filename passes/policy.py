"""Mixed-precision policies: which quantization scheme each weight gets.

A policy is a YAML file (read with `yaml.safe_load`), or the name of a bundled one in
`examples/policies/`. Settings resolve from general to specific:

    default  <  roles[<role>]  <  layers[<i>]  <  layers["<i>.<role>"]

where a role is a Linear role (`q_proj` ... `down_proj`, `fc1`, `fc2`, `qkv_proj`, `lm_head`) or
`embedding`. Each setting may give `bits` (2, 3, 4, 8), `group` (0 = per output channel, 32, 64,
128), `method` (`rtn`, `gptq`), `sparsity` (`null`, "2:4", "1:4", "4:8", "2:8") and
`sparsity_method` (`magnitude`, `sparsegpt`). An `auto` section (`target_bits`, `candidates`)
turns on the automatic assignment by measured sensitivity (passes/auto_precision.py).

Two settings are about activations (passes/act_calibration.py). `smoothing: {alpha: 0.5}` moves
per-channel scale from each norm's output into the linears it feeds (SmoothQuant), folded into the
norm's weight: weights change, ops do not, so it compiles like any policy. `activations` is
`per-token` (the hardware: each token row by its own max) or `static-per-tensor`, one calibrated
scale per linear input: a what-if of the integer model only, which `compile` refuses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from llmfab.ir.quant import NM, QuantError, QuantScheme
from llmfab.ir.yaml_file import read_yaml

POLICY_DIR = Path(__file__).resolve().parent.parent / "examples" / "policies"
ROLES = ("embedding", "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
         "gate_up_proj", "down_proj", "fc1", "fc2", "lm_head", "linear")
METHODS = ("rtn", "gptq")
SPARSITY_METHODS = ("magnitude", "sparsegpt")
SETTING_KEYS = ("bits", "group", "method", "sparsity", "sparsity_method")
TOP_KEYS = ("name", "description", "default", "roles", "layers", "auto", "calibration", "activations", "smoothing")
PER_TOKEN, STATIC = "per-token", "static-per-tensor"
ACTIVATIONS = (PER_TOKEN, STATIC)
DEFAULT_ALPHA = 0.5


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class WeightPlan:
    """What one weight gets: a scheme and how to reach it."""
    scheme: QuantScheme
    method: str = "rtn"
    sparsity_method: str = "magnitude"

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq" or (self.scheme.sparsity is not None and self.sparsity_method == "sparsegpt")

    def __str__(self) -> str:
        s = f"{self.scheme} {self.method}"
        return s + (f" {self.sparsity_method}" if self.scheme.sparsity else "")


@dataclass(frozen=True)
class Calibration:
    samples: int = 4       # token streams
    seq_len: int = 32      # tokens per stream
    seed: int = 0          # of the random streams used when no token file is given
    tokens: str | None = None  # a file of whitespace-separated token ids (relative to the policy)
    origin: str = ""           # what named the token file ("p.yaml: calibration.tokens", "--calibration")


@dataclass(frozen=True)
class AutoSpec:
    target_bits: float
    candidates: tuple[int, ...] = (2, 3, 4, 8)


@dataclass(frozen=True)
class Policy:
    name: str
    source: str
    default: Mapping = field(default_factory=dict)
    roles: Mapping = field(default_factory=dict)
    layers: Mapping = field(default_factory=dict)
    auto: AutoSpec | None = None
    calibration: Calibration = Calibration()
    activations: str = PER_TOKEN       # or STATIC: a what-if of the integer model only
    smoothing: float | None = None     # SmoothQuant's alpha; None: no smoothing

    def settings(self, role: str, layer: int | None) -> dict:
        merged = {"bits": 8, "group": 128, "method": "rtn", "sparsity": None, "sparsity_method": "magnitude"}
        merged.update(self.default)
        merged.update(self.roles.get(role, {}))
        if layer is not None:
            merged.update(self.layers.get(str(layer), {}))
            merged.update(self.layers.get(f"{layer}.{role}", {}))
        return merged

    def field_of(self, key: str, role: str, layer: int | None) -> str:
        """The policy field `settings` took `key` from for this role and layer, for errors."""
        scopes = [(f"layers.{layer}.{role}", self.layers.get(f"{layer}.{role}", {})),
                  (f"layers.{layer}", self.layers.get(str(layer), {}))] if layer is not None else []
        scopes += [(f"roles.{role}", self.roles.get(role, {})), ("default", self.default)]
        return next((f"{scope}.{key}" for scope, values in scopes if key in values),
                    f"{key} (unset: the built-in default)")

    def plan(self, role: str, layer: int | None) -> WeightPlan:
        s = self.settings(role, layer)
        where = f"{self.source}: settings for {role}" + (f" in layer {layer}" if layer is not None else "")
        try:
            scheme = QuantScheme(bits=s["bits"], group=s["group"], sparsity=_pattern(s["sparsity"], where))
        except QuantError as e:
            raise PolicyError(f"{where}: {e}") from None
        return WeightPlan(scheme, s["method"], s["sparsity_method"])


def _pattern(v, where: str):
    if v is None:
        return None
    nm = NM.parse(v)
    if nm:
        return tuple(nm)
    raise PolicyError(f"{where}: sparsity must be null or a pattern like \"2:4\", not {v!r}")


def _setting(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a mapping of {', '.join(SETTING_KEYS)}, not {raw!r}")
    for k, v in raw.items():
        if k not in SETTING_KEYS:
            raise PolicyError(f"{where}: unknown key {k!r}; expected one of {', '.join(SETTING_KEYS)}")
        if k in ("bits", "group") and (not isinstance(v, int) or isinstance(v, bool)):
            raise PolicyError(f"{where}: {k} must be an integer, not {v!r}")
        if k == "method" and v not in METHODS:
            raise PolicyError(f"{where}: method must be one of {', '.join(METHODS)}, not {v!r}")
        if k == "sparsity_method" and v not in SPARSITY_METHODS:
            raise PolicyError(f"{where}: sparsity_method must be one of {', '.join(SPARSITY_METHODS)}, not {v!r}")
        if k == "sparsity":
            _pattern(v, where)
    return dict(raw)


def parse_policy(data, source: str) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy must be a YAML mapping")
    for k in data:
        if k not in TOP_KEYS:
            raise PolicyError(f"{source}: unknown key {k!r}; expected one of {', '.join(TOP_KEYS)}")
    default = _setting(data.get("default") or {}, f"{source}: default")
    roles = data.get("roles") or {}
    if not isinstance(roles, dict):
        raise PolicyError(f"{source}: roles must be a mapping from role to settings")
    for r in roles:
        if r not in ROLES:
            raise PolicyError(f"{source}: roles: unknown role {r!r}; expected one of {', '.join(ROLES)}")
    roles = {r: _setting(v, f"{source}: roles.{r}") for r, v in roles.items()}
    layers = {}
    for k, v in (data.get("layers") or {}).items():
        key = str(k)
        head, _, role = key.partition(".")
        if not head.isdigit() or (role and role not in ROLES):
            raise PolicyError(f"{source}: layers: key {k!r} must be a layer index or \"<index>.<role>\"")
        layers[key] = _setting(v, f"{source}: layers.{key}")
    auto = None
    if data.get("auto") is not None:
        a = data["auto"]
        if not isinstance(a, dict) or not isinstance(a.get("target_bits"), (int, float)):
            raise PolicyError(f"{source}: auto must give target_bits (average bits per weight, with scales)")
        cands = tuple(a.get("candidates", (2, 3, 4, 8)))
        if not cands or any(c not in (2, 3, 4, 8) for c in cands):
            raise PolicyError(f"{source}: auto.candidates must be bit widths from 2, 3, 4, 8, not {list(cands)}")
        extra = set(a) - {"target_bits", "candidates"}
        if extra:
            raise PolicyError(f"{source}: auto: unknown key {sorted(extra)[0]!r}")
        auto = AutoSpec(float(a["target_bits"]), tuple(sorted(cands)))
    raw_cal = data.get("calibration") or {}
    if not isinstance(raw_cal, dict) or set(raw_cal) - {"samples", "seq_len", "seed", "tokens"}:
        raise PolicyError(f"{source}: calibration takes samples, seq_len, seed and tokens")
    cal = dict(raw_cal)
    tokens = cal.pop("tokens", None)
    if tokens is not None:
        if not isinstance(tokens, str):
            raise PolicyError(f"{source}: calibration.tokens must be a file path")
        tokens = str((Path(source).parent / tokens) if not Path(tokens).is_absolute() else Path(tokens))
    for k, v in cal.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise PolicyError(f"{source}: calibration values must be integers")
        if v < (0 if k == "seed" else 1):  # numpy and the interpreter fail on these with no word of the file
            raise PolicyError(f"{source}: calibration.{k} must be {'>= 0' if k == 'seed' else 'positive'}, not {v}")
    calibration = dataclasses.replace(Calibration(), tokens=tokens, **cal,
                                      origin=f"{source}: calibration.tokens" if tokens else "")
    policy = Policy(str(data.get("name", Path(source).stem)), source, default, roles, layers, auto, calibration,
                    _activations(data.get("activations", PER_TOKEN), source), _smoothing(data, source))
    for r in ROLES:  # fail now, not halfway through quantizing
        policy.plan(r, None)
    for key in layers:
        head, _, role = key.partition(".")
        policy.plan(role or "linear", int(head))
    return policy


def _activations(v, source: str) -> str:
    if v not in ACTIVATIONS:
        raise PolicyError(f"{source}: activations must be one of {', '.join(ACTIVATIONS)}, not {v!r}")
    return v


def _smoothing(data: dict, source: str) -> float | None:
    """SmoothQuant's alpha from `smoothing: {alpha: a}` (`{}`: the default 0.5; null or absent: off)."""
    raw = data.get("smoothing")
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"alpha"}:
        raise PolicyError(f"{source}: smoothing must be a mapping with alpha (0 to 1, default {DEFAULT_ALPHA}) "
                          f"or null, not {raw!r}")
    a = raw.get("alpha", DEFAULT_ALPHA)
    if not isinstance(a, (int, float)) or isinstance(a, bool) or not 0.0 <= a <= 1.0:
        raise PolicyError(f"{source}: smoothing.alpha must be a number from 0 to 1, not {a!r}")
    return float(a)


def bundled_policies() -> list[str]:
    return sorted(p.stem for p in POLICY_DIR.glob("*.yaml"))


def load_policy(spec: str) -> Policy:
    """A policy file path, or the name of a bundled policy."""
    p = Path(spec)
    if not p.is_file():
        if (POLICY_DIR / f"{spec}.yaml").is_file():
            p = POLICY_DIR / f"{spec}.yaml"
        else:
            raise PolicyError(f"{spec}: no such policy file or bundled policy "
                              f"(bundled: {', '.join(bundled_policies())})")
    _, data = read_yaml(p, "policy", PolicyError)
    return parse_policy(data, str(p))
