"""atom-mesh router: an OpenAI-compatible gateway for co-located and P/D-disaggregated engines.

Pipeline: prepare -> place -> dispatch -> render. See README.md for the module map.
"""

__version__ = "0.1.0"
