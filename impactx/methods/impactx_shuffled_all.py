"""A shuffled-maps control: IMPACTX exactly as configured (its `impactx` section, λ included), each
training image paired with the map of ANOTHER training image of any class (a seeded permutation,
impactx.maps.paired_with_others; the other control is impactx_shuffled_class: of its own class). If IMPACTX matches it, the
gain does not come from each image's own explanation."""

from __future__ import annotations

from impactx.methods import Stage1, register
from impactx.methods.impactx import build_impactx


@register(
    "impactx_shuffled_all",
    label="IMPACTX, another image's map, any class (control)",
    map_kind="D(LEP(x)), trained on shuffled maps (any class)",
    control_of="impactx",
    fixed={"map_pairing": "across_classes"},
)
def impactx_shuffled_all(stage1: Stage1, settings):
    return build_impactx(stage1, settings)
