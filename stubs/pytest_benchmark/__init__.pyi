# Partial stub: covers only what agentfly_min's benchmarks call.
