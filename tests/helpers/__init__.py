"""Test helpers, importable from any test folder (``tests/`` is on the path through its conftest.py):

- ``helpers.dims``: the tiny encoder/decoder dims unit tests build models from, and MiniLM's (torch-free);
- ``helpers.models``: inputs and outputs for tiny models (padded batches, the output a family is judged by,
  non-zero adapters);
- ``helpers.store``: a delivery-server store around a tiny random BERT and a real uvicorn server over it.

``tests/conftest.py`` exposes the stateful ones as fixtures (``make_store``, ``store``/``server`` in
tests/server); plain functions are imported.
"""
