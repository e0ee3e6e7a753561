"""A Streamlit page over a single-process store (here Qdrant local mode).

Streamlit runs every browser session's script in a thread of one server
process, and deployments often run several server processes: the store
must still be opened by one of them at a time. ArbiterLock serves both:
threads of one process wait for each other (thread_local=True, as with
filelock) and processes wait through the daemon.

    pip install streamlit qdrant-client
    APP_QDRANT=/var/lib/app/qdrant streamlit run streamlit_app.py

(streamlit and qdrant-client are not packaged for Debian 12 and are not
installed where this project's tests run, so this recipe is not run by
them.)
"""
import os

import streamlit as st
from qdrant_client import QdrantClient

from arbiter_client import ArbiterLock

PATH = os.environ.get("APP_QDRANT", "qdrant-data")


@st.cache_resource           # one lock object for every session
def store_lock():
    return ArbiterLock("qdrant:" + os.path.abspath(PATH), timeout=30)


st.title("Notes")
with store_lock():           # open the folder only while holding the lease
    client = QdrantClient(path=PATH)
    try:
        names = [c.name for c in client.get_collections().collections]
        counts = {n: client.count(n).count for n in names}
    finally:
        client.close()
st.write(counts or "no collections yet")
