"""File contents that live on HTTP servers and S3-compatible object stores.

The pieces, in the order a read meets them: :mod:`.settings` (what the user
allowed and how long a read may take), :mod:`.origins` (one object on one
server, fetched by byte range with bounded retries), :mod:`.chunks` (the
verified on-disk chunk cache every export of a process shares) and
:mod:`ext4gen.model.remote` (the :class:`~ext4gen.model.sources.Source` the
planner sees).  Nothing here is imported unless a manifest names remote content.
"""
