"""The broker's durable store: journal batches in, everything it kept out on restore.

The server uses `Persistence` (built from a `PersistenceConfig`) and catches `StoreError`;
`Store` is the SQLite store behind it, `DeadLetterLog` the JSON-lines log of dead letters.
"""

from broker.store.dlq_log import DeadLetterLog
from broker.store.errors import StoreError
from broker.store.persistence import SAVE_BATCH, Persistence, PersistenceConfig
from broker.store.schema import SCHEMA_VERSION
from broker.store.sqlite import Store

__all__ = [
    "SAVE_BATCH",
    "SCHEMA_VERSION",
    "DeadLetterLog",
    "Persistence",
    "PersistenceConfig",
    "Store",
    "StoreError",
]
