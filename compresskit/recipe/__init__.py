"""Recipes: the typed, versioned schema of a YAML list of compression passes that ``compresskit run``
runs (prune -> distill -> quantize -> eval gate -> save -> push; the runner is compresskit.api_recipe).

    version: 1
    model: smollm2-135m
    output: smollm2-135m-serve-4bit
    passes:
      - quantize: {method: omniquant, wbits: 4, group_size: 64}
      - eval: {tasks: [ppl, passkey], lengths: [4096], max_drop: 2}

Parsing never stops at the first problem: every unknown or bad field, pass and override is collected,
each naming its pass and field, and each pass's settings are checked by its own config class (a
registered pass's, compresskit.core.registry; or `EvalPass`, `SavePass`, `PushPass`). The recipes shipped
with compresskit are the YAML files in ``shipped/``.
"""
from .passes import (
    RECIPE_VERSION, STEPS, EvalPass, Pass, PushPass, RecipeError, SavePass, check_settings, model_passes, pass_names,
    yaml_value,
)
from .schema import (
    TOP_FIELDS, Recipe, apply_overrides, load_recipe, parse_overrides, parse_recipe, recipe_file, shipped_recipes,
)

__all__ = ["RECIPE_VERSION", "STEPS", "model_passes", "pass_names", "TOP_FIELDS", "EvalPass", "Pass", "PushPass",
           "Recipe", "RecipeError", "SavePass", "apply_overrides", "check_settings", "load_recipe", "parse_overrides",
           "parse_recipe", "recipe_file", "shipped_recipes", "yaml_value"]
