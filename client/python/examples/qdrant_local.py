"""Qdrant in local mode (QdrantClient(path=...)) shared by several
processes.

Local mode lets one process at a time open a storage folder (a second one
gets "Storage folder ... is already accessed by another instance of Qdrant
client"). Hold the lease while the client is open, and close the client
before letting go; every process then takes its turn instead of failing.

    pip install qdrant-client
    python3 qdrant_local.py /var/lib/app/qdrant "some text"

(qdrant-client is not packaged for Debian 12 and is not installed where this
project's tests run, so this recipe is not run by them; the same pattern is,
with gdbm, LevelDB and SQLite, in the examples beside it.)
"""
import os
import sys
import zlib

from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

from arbiter_client import ArbiterLock

COLLECTION = "notes"


def embed(text):
    """A stand-in embedding (4 numbers from the text); use a real model."""
    h = zlib.crc32(text.encode())
    return [((h >> s) & 0xFF) / 255.0 for s in (0, 8, 16, 24)]


def add_note(path, text):
    """Store text; returns how many notes there are now."""
    lock = ArbiterLock("qdrant:" + os.path.abspath(path), timeout=60)
    with lock:                          # exclusive while the folder is open
        client = QdrantClient(path=path)
        try:
            if not client.collection_exists(COLLECTION):
                client.create_collection(
                    COLLECTION,
                    vectors_config=VectorParams(size=4,
                                                distance=Distance.COSINE))
            client.upsert(COLLECTION, points=[PointStruct(
                id=zlib.crc32(text.encode()), vector=embed(text),
                payload={"text": text, "token": lock.lease.token})])
            return client.count(COLLECTION).count
        finally:
            client.close()


if __name__ == "__main__":
    print(add_note(sys.argv[1], " ".join(sys.argv[2:]) or "hello"))
