"""Co-located workers speaking the OpenAI API: forward the client's bytes unchanged."""

from __future__ import annotations

from collections.abc import Mapping

from router.adapters.base import Adapter, Upstream, expect_single
from router.placement.types import PlacementPlan
from router.prepare import PreparedRequest


class OpenAIAdapter(Adapter):
    name = "openai"

    async def send(self, plan: PlacementPlan, request: PreparedRequest, headers: Mapping[str, str]) -> Upstream:
        return await self.send_whole(expect_single(plan), request, headers)
