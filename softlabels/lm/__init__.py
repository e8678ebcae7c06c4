"""Language models: token-level stores (format version 5, 6 when sparse; 3 before them).

Data path: ``tokenizer`` (local tokenizers: encoding with their special tokens, identity) ->
``text`` (documents or pre-tokenised ids -> ``TokenSequences``, windows, prompt masks) ->
``generate`` (``generate_tokens``: the teachers, ``models``, over every position) -> a token
store -> ``dataset`` (``TokenTargetDataset``, ``SequenceSampler``, ``collate_tokens``: stage
two's batches). ``cli`` is ``softlabels generate-lm``. ``sources`` adds ``datasets:`` SPECs and
chat records (an assistant-only loss mask the store records); ``capture`` reads existing top-k
log-probability captures and ``importer`` writes them as token stores (``softlabels import``,
``import_cli``).

The public names are re-exported at ``softlabels``; this package imports nothing on import, so
that ``softlabels.teachers`` can use ``softlabels.lm.models`` without loading stage one.
"""
