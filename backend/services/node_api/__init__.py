"""The node API service: what a node's token may do, behind the ``/api/v1/node`` routes.

`access` holds the guards every request passes (the caller's federation, its own step, whether that step
or federation still takes anything); `leases` claims steps and makes tasks of them; `transfers` serves
downloads and stores uploads; `completion` completes steps; `keys` relays secure aggregation's public keys
and takes its reveals. The wire models are `messaging.node_api`'s, shared with the node's client.
"""
