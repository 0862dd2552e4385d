"""The bottom layer: vocabulary every other package shares (errors, JSON/Route/Criteria
types, identifier grammar) and loopback serving helpers. Imports nothing of ours."""
