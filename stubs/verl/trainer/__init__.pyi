# Partial stub: covers only what agentfly_min and its tests call (verl 0.9 API).
