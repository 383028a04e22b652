"""Worked example of docs/node-steps.md: a node's steps of its own (`plain_torch_steps`)."""
