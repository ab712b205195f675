"""The schema of a PEFT LoRA ``adapter_config.json``, checked before peft sees the file.

Types are strict (no ``"16"`` for 16, no ``true`` for 1, no NaN). Keys this schema does not know,
written by other peft versions, are allowed and left alone. Settings that would change the shared
base model's weights or structure, or need a LoRA variant Adaptrix does not serve, are refused.
The first problem is reported as ``adapter_config.json: <field>: <problem>``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from adaptrix_core.errors import AdapterConfigError, AdapterUnsupportedError

CONFIG_FILE = "adapter_config.json"
TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
# Variants whose sub-config makes peft build other layers, or rewrite the base weights (KaSA).
# Megatron layers need the megatron package and model-parallel state a served model does not have.
UNSUPPORTED_VARIANTS = ("kasa_config", "velora_config", "monteclora_config", "use_bdlora", "arrow_config",
                        "lora_ga_config", "alora_invocation_tokens", "megatron_config")
#: Options refused because they change the shared base model or ask for an unserved LoRA variant:
#: they raise ``AdapterUnsupportedError`` (a config error and an incompatibility at once).
BASE_CHANGING = (*UNSUPPORTED_VARIANTS, "layer_replication", "trainable_token_indices", "modules_to_save",
                 "init_lora_weights")


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"{value!r} is not a valid regular expression ({exc})") from None
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise ValueError("names must not be empty")
    return value


def _at_least(low: float, high: float | None = None):
    def check(value: float) -> float:
        if value < low or (high is not None and value > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise ValueError(f"must be {bound}, got {value!r}")
        return value

    return check


def _regex_keys(value: dict[str, Any]) -> dict[str, Any]:
    for key in value:
        _regex(key)
    return value


def _init_method(value: str) -> str:
    if value != "gaussian":
        raise ValueError(
            f"initialisation {value!r} is not supported: Adaptrix loads trained weights onto a shared base model, "
            "and methods such as PiSSA, OLoRA, CorDA, LoftQ and EVA change or need the base weights; re-save the "
            "adapter as plain LoRA (init_lora_weights true)"
        )
    return value


Name = Annotated[StrictStr, AfterValidator(_non_empty)]
Pattern = Annotated[StrictStr, AfterValidator(_non_empty), AfterValidator(_regex)]
Index = Annotated[StrictInt, AfterValidator(_at_least(0))]
Rank = Annotated[StrictInt, AfterValidator(_at_least(1))]
Number = float  # strict: an int or a float, never a bool, a string or NaN

# What a union-typed field must be, said plainly (pydantic's messages for unions name internal types).
EXPECTED = {
    "target_modules": "a list of module names or one regular expression",
    "exclude_modules": "a list of module names or one regular expression",
    "layers_to_transform": "a list of layer indices (non-negative integers) or one index",
    "layers_pattern": "a list of names or one name of the model's block list (e.g. \"layers\")",
    "trainable_token_indices": "a list of token ids or a {module: [token ids]} object",
    "init_lora_weights": "true, false or \"gaussian\"",
}


class LoraConfigSchema(BaseModel):
    """The fields of a PEFT LoRA config that peft reads when an adapter is loaded, with their types."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)

    peft_type: StrictStr
    task_type: Literal[TASK_TYPES] | None = None  # type: ignore[valid-type]
    base_model_name_or_path: StrictStr | None = None
    revision: StrictStr | None = None
    peft_version: StrictStr | None = None
    inference_mode: StrictBool = False
    auto_mapping: dict[str, Any] | None = None
    r: Rank = 8
    target_modules: list[Name] | Pattern | None = None
    exclude_modules: list[Name] | Pattern | None = None
    lora_alpha: Number = 8
    lora_dropout: Annotated[Number, AfterValidator(_at_least(0, 1))] = 0.0
    fan_in_fan_out: StrictBool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: StrictBool = False
    use_dora: StrictBool = False
    lora_bias: StrictBool = False
    init_lora_weights: StrictBool | Annotated[StrictStr, AfterValidator(_init_method)] = True
    modules_to_save: list[Name] | None = None
    layers_to_transform: list[Index] | Index | None = None
    layers_pattern: list[Name] | Name | None = None
    # peft declares these Optional but calls .keys() on them: null is refused, {} is "none".
    rank_pattern: Annotated[dict[str, Rank], AfterValidator(_regex_keys)] = {}
    alpha_pattern: Annotated[dict[str, Number], AfterValidator(_regex_keys)] = {}
    target_parameters: list[Name] | None = None
    trainable_token_indices: list[Index] | dict[str, list[Index]] | None = None
    layer_replication: None = None
    megatron_config: dict[str, Any] | None = None
    megatron_core: StrictStr | None = None
    loftq_config: dict[str, Any] | None = None
    eva_config: dict[str, Any] | None = None
    corda_config: dict[str, Any] | None = None
    use_qalora: StrictBool = False
    qalora_group_size: Rank = 16
    ensure_weight_tying: StrictBool = False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(exc: ValidationError, config: dict[str, Any]) -> str:
    """``adapter_config.json: <field>: <problem>`` for the first field pydantic found wrong."""
    errors = exc.errors()
    field = str(errors[0]["loc"][0]) if errors[0]["loc"] else "(top level)"
    same = [e for e in errors if e["loc"] and str(e["loc"][0]) == field]
    value_errors = [e for e in same if e["type"] == "value_error"]
    first = value_errors[0] if value_errors else same[0]
    if first["type"] == "value_error":
        problem = str(first["ctx"]["error"])
    elif field == "layer_replication":
        problem = "duplicating base-model layers is not supported (it changes the shared model); it must be null"
    elif field in EXPECTED:
        problem = f"must be {EXPECTED[field]}"
    else:
        problem = first["msg"][0].lower() + first["msg"][1:]
    # Union members add internal names to the location; the plain wording above covers those fields.
    where = "" if field in EXPECTED else "".join(f"[{part!r}]" for part in first["loc"][1:])
    if "got " not in problem and first["type"] != "missing":
        problem += f", got {_short(config.get(field) if field in EXPECTED else first['input'])}"
    return f"{CONFIG_FILE}: {field}{where}: {problem}."


def validate_adapter_config(config: Any) -> LoraConfigSchema:
    """Check a parsed ``adapter_config.json`` (a LoRA one: check ``peft_type`` first); return the model.

    Raises ``AdapterConfigError`` with the first problem, e.g. ``adapter_config.json: r: must be at
    least 1, got 0.``
    """
    if not isinstance(config, dict):
        raise AdapterConfigError(f"{CONFIG_FILE} must be a JSON object, not {type(config).__name__}.")
    try:
        schema = LoraConfigSchema.model_validate(config)
    except ValidationError as exc:
        errors = exc.errors()
        field = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else ""
        kind = AdapterUnsupportedError if field in BASE_CHANGING else AdapterConfigError
        raise kind(_describe(exc, config)) from None
    except RecursionError:
        raise AdapterConfigError(f"{CONFIG_FILE} is nested too deeply.") from None
    _check_combinations(schema, config)
    return schema


def _refuse(field: str, problem: str) -> None:
    kind = AdapterUnsupportedError if field in BASE_CHANGING else AdapterConfigError
    raise kind(f"{CONFIG_FILE}: {field}: {problem}.")


def _check_combinations(schema: LoraConfigSchema, config: dict[str, Any]) -> None:
    """Settings peft refuses together, and variants Adaptrix does not serve."""
    for field in UNSUPPORTED_VARIANTS:
        if config.get(field) is not None:
            _refuse(field, "not supported by Adaptrix, which serves plain LoRA, rsLoRA and DoRA adapters on one "
                           "shared model (the field must be null)")
    # Both wrap modules of the shared model itself (embedding rows, whole copies of layers); peft leaves
    # those wrappers behind when such an adapter fails to load, breaking every later load.
    if schema.trainable_token_indices is not None:
        _refuse("trainable_token_indices", "adapters that train token embeddings are not supported (it must be null)")
    if schema.modules_to_save:
        _refuse("modules_to_save", "adapters that carry full copies of model modules are not supported "
                                   "(it must be null or empty)")
    if isinstance(schema.target_modules, str) and schema.layers_to_transform is not None:
        _refuse("layers_to_transform", "cannot be used when target_modules is a regular expression (a string)")
    if isinstance(schema.target_modules, str) and schema.layers_pattern is not None:
        _refuse("layers_pattern", "cannot be used when target_modules is a regular expression (a string)")
    if schema.layers_pattern and schema.layers_to_transform is None:
        _refuse("layers_pattern", "is set but layers_to_transform is not; set both or neither")
    if schema.lora_bias and schema.use_dora:
        _refuse("lora_bias", "lora_bias=true cannot be combined with use_dora=true")


def expected_rank(schema: LoraConfigSchema, module: str) -> int:
    """The rank peft gives ``module``: the first ``rank_pattern`` key matching its path, else ``r``."""
    for key, rank in schema.rank_pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return rank
    return schema.r
