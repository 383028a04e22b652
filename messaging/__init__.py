"""The contract between the server and its nodes, imported by both sides and importing neither."""
