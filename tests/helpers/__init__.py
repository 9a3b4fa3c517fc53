"""Test helpers, importable from any test folder (``tests/`` is on the path through its conftest.py):

- ``helpers.dims``: the tiny encoder/decoder dims unit tests build models from, and MiniLM's (torch-free);
- ``helpers.models``: inputs and outputs for tiny models (padded batches, the output a family is judged by,
  non-zero adapters);
- ``helpers.store``: a delivery-server store around a tiny random BERT and a real uvicorn server over it;
- ``helpers.postgres``: a throwaway PostgreSQL cluster (run as the ``postgres`` user) and a TCP proxy that can
  cut a server off from it.

``tests/conftest.py`` exposes the stateful ones as fixtures (``make_store``, ``store``/``server`` in
tests/server) and the setup every tiny-model test shares (``tiny_batch``, ``encoder_batch``: the standard padded
batch). What a test calls with its own arguments stays a plain function, imported: ``output`` (once per model
compared), ``randomize_adapters`` (inside model builders, with the builder's seed and scale) and
``padded_batch`` for a batch of another seed or length.
"""
