"""A shuffled-maps control: IMPACTX exactly as configured (its `impactx` section, λ included), each
training image paired with the map of ANOTHER training image of its own class (a seeded permutation,
impactx.maps.paired_with_others; the other control is impactx_shuffled_all: of any class). If IMPACTX matches it, the
gain does not come from each image's own explanation."""

from __future__ import annotations

from impactx.methods import Stage1, register
from impactx.methods.impactx import build_impactx


@register(
    "impactx_shuffled_class",
    label="IMPACTX, another image's map, same class (control)",
    map_kind="D(LEP(x)), trained on shuffled maps (same class)",
    control_of="impactx",
    fixed={"map_pairing": "within_class"},
)
def impactx_shuffled_class(stage1: Stage1, settings):
    return build_impactx(stage1, settings)
