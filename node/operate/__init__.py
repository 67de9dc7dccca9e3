"""Operating the node: `serve` supervision, status reports and their rendering, the demo,
the conformance statement and retention."""
