"""Router-side generation for token-in/token-out engines (gRPC workers): the request the
router sends (token ids + sampling), the chunks it gets back, and turning those into
OpenAI answers. Transport-neutral: `router.generation.types` is the boundary."""
