"""moto's server, with DynamoDB's writes made atomic, as DynamoDB's are.

moto answers requests on threads and checks a write's condition before
applying it without a lock: two conditional writes of one item that race
(two processes taking the same free lease) can both pass their checks
and both "succeed", which DynamoDB never lets happen. The lease tests
race exactly so. Each write here holds one lock from its check to its
last change.

    python scripts/moto_server.py -H 127.0.0.1 -p 5000
"""

import functools
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
LOCK = threading.RLock()


def atomic(write):
    @functools.wraps(write)
    def locked(*args, **kwargs):
        with LOCK:
            return write(*args, **kwargs)

    return locked


for name in WRITES:
    setattr(DynamoDBBackend, name, atomic(getattr(DynamoDBBackend, name)))

if __name__ == "__main__":
    main()
