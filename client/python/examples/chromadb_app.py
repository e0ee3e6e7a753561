"""ChromaDB's PersistentClient shared by several processes.

ChromaDB keeps a persistent collection in SQLite plus index files in one
folder, and is not safe for writers in several processes at once (web
workers, an indexer, a CLI). Let one process at a time open and write it:
hold the lease while the client is in use.

    pip install chromadb
    python3 chromadb_app.py /var/lib/app/chroma "some text"

(chromadb is not packaged for Debian 12 and is not installed where this
project's tests run, so this recipe is not run by them; the same pattern is,
with gdbm, LevelDB and SQLite, in the examples beside it.)
"""
import os
import sys
import zlib

import chromadb

from arbiter_client import ArbiterLock


def embed(text):
    """A stand-in embedding (4 numbers from the text); use a real model."""
    h = zlib.crc32(text.encode())
    return [((h >> s) & 0xFF) / 255.0 for s in (0, 8, 16, 24)]


def add_document(path, text):
    """Store text; returns how many documents there are now."""
    with ArbiterLock("chroma:" + os.path.abspath(path), timeout=60):
        client = chromadb.PersistentClient(path=path)
        try:
            docs = client.get_or_create_collection("docs")
            docs.upsert(ids=["%08x" % zlib.crc32(text.encode())],
                        documents=[text], embeddings=[embed(text)])
            return docs.count()
        finally:
            # Chroma caches one system per path in a process: drop it, so
            # the next open reads what other processes wrote meanwhile.
            if hasattr(client, "close"):   # chromadb versions with close()
                client.close()
            else:
                client._system.stop()
                client.clear_system_cache()


if __name__ == "__main__":
    print(add_document(sys.argv[1], " ".join(sys.argv[2:]) or "hello"))
