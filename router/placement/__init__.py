"""The placement core: pure, transport-neutral decisions of where a request runs."""

from router.placement.types import Pair, PlacementPlan, RequestDescriptor, Single

__all__ = ["Pair", "PlacementPlan", "RequestDescriptor", "Single"]
